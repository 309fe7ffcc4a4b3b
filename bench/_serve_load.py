"""Load generators of bench/serve.py: wrk for HTTP, h2load for gRPC, plain or over TLS.

HTTP: wrk (`apt-get install wrk`), one thread, `conc` keep-alive connections, the request body
and headers set by a Lua script written per cell; its own latency histogram gives p50/p99.
gRPC: h2load (`apt-get install nghttp2-client`), one thread, `conc` HTTP/2 connections with one
stream each, posting one pre-serialized ModelInferRequest (gRPC framing, `te: trailers`); one
call through a real gRPC client first checks that the server answers it. Per-request latencies
come from h2load's log. Both tools are C and run on the same cores as the servers.

TLS (a server with a CA file): wrk and h2load take `https://` URLs and keep their connections
for the whole measurement, so each connection's handshake is paid once, before or at the start
of a run of thousands of requests. Neither tool verifies the certificate; the readiness check
(bench/_serve_servers.py) and the one real-client gRPC call do, with the CA. h2load must
negotiate HTTP/2 through ALPN (gRPC servers refuse a TLS connection without it): a run that
reports another application protocol is an error. `tls_session` names the protocol version
and cipher a port negotiates with a default client.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import statistics
import subprocess
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # loopback only, by design
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def request_body(batch: int, num_features: int, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The infer request of one cell: (body, extra headers). JSON carries float32 values as numbers."""
    x = np.random.default_rng(0).standard_normal((batch, num_features)).astype(np.float32)
    tensor = {"name": "input", "shape": [batch, num_features], "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": x.nbytes}
        head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
        return head + x.tobytes(), headers
    tensor["data"] = x.ravel().tolist()
    return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}


def _lua(body_file: Path, headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines += [f'local f = io.open("{body_file}", "rb")', 'wrk.body = f:read("*all")', "f:close()"]
    return "\n".join(lines) + "\n"


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * _UNITS[unit]


def parse_wrk(output: str) -> dict:
    """req/s, p50/p99 (ms) and errors (non-2xx + socket errors) from `wrk --latency` output."""
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)) else 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(g) for g in m.groups())
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}


def run_wrk(
    url: str, body: bytes, headers: dict[str, str], conc: int, warmup: float, duration: float, tmp: Path
) -> dict:
    body_file, script = tmp / "body.bin", tmp / "cell.lua"
    body_file.write_bytes(body)
    script.write_text(_lua(body_file, headers))
    base = ["wrk", "-t1", f"-c{conc}", "--latency", "-s", str(script), "--timeout", "10s"]
    if warmup > 0:
        subprocess.run([*base, f"-d{warmup:g}s", url], check=True, capture_output=True, timeout=warmup + 30)
    cmd = [*base, f"-d{duration:g}s", url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 30)
    return parse_wrk(out.stdout)


# --- gRPC (this file as a process) -------------------------------------------------------------


def grpc_request_bytes(model: str, batch: int, num_features: int) -> bytes:
    from runtime.serve.grpc_proto import messages

    m = messages()
    x = np.random.default_rng(0).standard_normal((batch, num_features)).astype(np.float32)
    request = m.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[batch, num_features])
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def tls_session(port: int, ca: Path, alpn: str | None = None) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384 (ALPN h2)': what a default client verifying with `ca` negotiates."""
    context = ssl.create_default_context(cafile=ca)
    if alpn:
        context.set_alpn_protocols([alpn])
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        name, version, _ = tls.cipher()
        chosen = tls.selected_alpn_protocol()
    return f"{version} {name}" + (f" (ALPN {chosen})" if chosen else "")


def check_grpc(port: int, token: str, payload: bytes, ca: Path | None = None) -> None:
    """One ModelInfer call with a real gRPC client (over TLS, verifying with `ca`, when given):
    h2load sees HTTP statuses, not grpc-status."""
    import grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    if ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        channel = grpc.secure_channel(f"{HOST}:{port}", credentials)
    else:
        channel = grpc.insecure_channel(f"{HOST}:{port}")
    with channel:
        reply = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            payload, metadata=metadata, timeout=10
        )
    if not reply:
        raise RuntimeError(f"empty ModelInfer reply from port {port}")


def run_h2load(
    port: int,
    token: str,
    model: str,
    batch: int,
    num_features: int,
    conc: int,
    warmup: int,
    duration: int,
    tmp: Path,
    ca: Path | None = None,
) -> dict:
    """gRPC ModelInfer through h2load: `conc` HTTP/2 connections with one stream each (TLS with `ca`)."""
    payload = grpc_request_bytes(model, batch, num_features)
    check_grpc(port, token, payload, ca)
    body, log = tmp / "grpc.bin", tmp / "h2load.log"
    body.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)  # gRPC message framing
    log.unlink(missing_ok=True)
    cmd = ["h2load", "-t1", f"-c{conc}", "-m1", f"-D{duration}", "-d", str(body), "--log-file", str(log)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    cmd += ["--warm-up-time", f"{warmup}"] if warmup else []
    cmd += ["-H", f"authorization: Bearer {token}"] if token else []
    url = f"{'https' if ca else 'http'}://{HOST}:{port}/inference.GRPCInferenceService/ModelInfer"
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True, timeout=warmup + duration + 60).stdout
    if ca and not re.search(r"^Application protocol: h2$", out, re.M):
        raise RuntimeError(f"h2load did not negotiate h2 over TLS with port {port}:\n{out}")
    rps = float(re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", out).group(1))
    failed, errored, timeouts = (int(g) for g in re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out).groups())
    non_2xx = sum(int(g) for g in re.search(r"\d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out).groups())
    micros = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.strip())
    q = statistics.quantiles(micros, n=100, method="inclusive") if len(micros) > 1 else [0.0] * 99
    return {"rps": rps, "p50_ms": q[49] / 1e3, "p99_ms": q[98] / 1e3, "errors": failed + errored + timeouts + non_2xx}
