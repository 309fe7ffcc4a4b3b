"""Serving benchmark: `runtime.serve` vs a bare endpoint in the same framework, over loopback.

    PYTHONPATH=. .venv/bin/python bench/serve.py                 # full table (~1 min)
    PYTHONPATH=. .venv/bin/python bench/serve.py --duration 1    # quicker, noisier

Model: the `mlp-binary` preset (1000 -> Dense(100, ReLU) -> Dense(1, sigmoid)) exported to ONNX
(fp32, random weights: serving cost does not depend on the values) and published to a temporary
local repository; or `--repo DIR --model NAME` to measure an existing repository.

Servers (each its own process, uvicorn + httptools + uvloop, one worker, on 127.0.0.1):
- `stratus`: `python -m runtime serve` as deployed (auth, limits, metrics, JSON access log to a
  file, ONNX Runtime);
- `bare`: the same ASGI stack that decodes and validates the same request with the same code
  (`runtime.serve.protocol`) and returns a fixed tensor: no auth, no model, no metrics, no log.
  It is the ceiling of protocol handling on this machine.

Load generator: a separate process (asyncio + uvloop, raw HTTP/1.1 keep-alive sockets, closed
loop: each of `concurrency` connections sends its next request when the previous answer arrived).
Each cell runs `--warmup` then `--duration` seconds. It shares the machine's cores with the server,
as the goals in the issue require. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # loopback only, by design
TOKEN = "bench-token-0123456789abcdef0123456789"  # noqa: S105 (a throwaway loopback token)
MODEL = "mlp-binary"


# --- the bare endpoint -------------------------------------------------------------------------


def bare_app_factory(num_features: int):
    """ASGI app: reads the body, decodes + validates it like runtime.serve, returns a fixed tensor."""
    from runtime.serve.protocol import Limits, RequestError, TensorSpec, decode_infer_request, encode_infer_response

    inputs = {"input": TensorSpec("input", "FP32", (-1, num_features))}
    outputs = {"output": TensorSpec("output", "FP32", (-1, 1))}
    limits = Limits()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        raw = headers.get(b"inference-header-content-length")
        try:
            req = decode_infer_request(b"".join(chunks), int(raw) if raw else None, inputs, outputs, limits)
        except RequestError as e:
            await send({"type": "http.response.start", "status": e.status, "headers": []})
            await send({"type": "http.response.body", "body": e.message.encode()})
            return
        batch = next(iter(req.inputs.values())).shape[0]
        body, json_length = encode_infer_response(
            MODEL, "1", req, {"output": np.full((batch, 1), 0.5, np.float32)}, outputs
        )
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if json_length is not None:
            hdrs.append((b"inference-header-content-length", str(json_length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    return app


def run_bare(port: int, num_features: int) -> None:
    import uvicorn

    uvicorn.run(
        bare_app_factory(num_features),
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


# --- the load generator (separate process) -----------------------------------------------------


def build_request(path: str, batch: int, num_features: int, binary: bool, auth: bool) -> bytes:
    x = np.random.default_rng(0).standard_normal((batch, num_features)).astype(np.float32)
    tensor = {"name": "input", "shape": [batch, num_features], "datatype": "FP32"}
    headers = [f"POST {path} HTTP/1.1", f"Host: {HOST}"]
    if auth:
        headers.append(f"Authorization: Bearer {TOKEN}")
    if binary:
        tensor["parameters"] = {"binary_data_size": x.nbytes}
        head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        body = head + x.tobytes()
        headers += ["Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {len(head)}"]
    else:
        tensor["data"] = x.ravel().tolist()  # what the stock client sends: float32 values as JSON numbers
        body = json.dumps({"inputs": [tensor]}).encode()
        headers.append("Content-Type: application/json")
    headers.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


async def _connection(port: int, request: bytes, stop_at: float, record_from: float, latencies: list, errors: list):
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            end = time.perf_counter()
            if head[9:12] != b"200":
                errors.append(head[:12].decode())
            elif start >= record_from:
                latencies.append(end - start)
    finally:
        writer.close()


async def _load(port: int, request: bytes, concurrency: int, warmup: float, duration: float) -> dict:
    now = time.perf_counter()
    record_from, stop_at = now + warmup, now + warmup + duration
    latencies: list[float] = []
    errors: list[str] = []
    await asyncio.gather(
        *(_connection(port, request, stop_at, record_from, latencies, errors) for _ in range(concurrency))
    )
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return {"rps": len(latencies) / duration, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "errors": len(errors)}


def run_loadgen(args: argparse.Namespace) -> None:
    import uvloop

    request = build_request(args.path, args.batch, args.num_features, args.binary, args.auth)
    result = uvloop.run(_load(args.port, request, args.concurrency, args.warmup, args.duration))
    print(json.dumps(result))


# --- orchestration -----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_ready(port: int, auth: bool, proc: subprocess.Popen, timeout: float = 60) -> None:
    import urllib.request

    path = "/v2/health/ready" if auth else "/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            req = urllib.request.Request(f"http://{HOST}:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
            urllib.request.urlopen(req, timeout=2)  # noqa: S310 (loopback URL built here)
            return
        except OSError as e:
            if not auth and "HTTP Error" in str(e):
                return  # the bare app answers (an error for GET /), so it is up
            time.sleep(0.2)
    raise TimeoutError("server did not become ready")


def _build_repo(root: Path, num_features: int) -> str:
    import torch

    from runtime.repository.artifact import write_manifest
    from runtime.repository.publish import publish
    from runtime.train.models import WithSigmoid, build_mlp
    from runtime.train.presets import mlp_binary

    cfg = mlp_binary()
    model = WithSigmoid(build_mlp(num_features, cfg.model)).eval()
    staged = root / "staged"
    staged.mkdir()
    torch.onnx.export(
        model,
        (torch.zeros(1, num_features),),
        str(staged / "model.onnx"),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    io = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, num_features]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}],
    }
    write_manifest(staged, {"model_name": MODEL, **io, "provenance": {"bench": "random weights"}})
    repo = root / "repo"
    publish(staged, str(repo), model_name=MODEL)
    return str(repo)


def _cell(port: int, auth: bool, path: str, batch: int, concurrency: int, binary: bool, args) -> dict:
    cmd = [sys.executable, __file__, "--loadgen", "--port", str(port), "--path", path, "--batch", str(batch)]
    cmd += ["--concurrency", str(concurrency), "--num-features", str(args.num_features)]
    cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    cmd += ["--binary"] * binary + ["--auth"] * auth
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.duration + args.warmup + 60)
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", help="existing model repository (default: build mlp-binary into a temp dir)")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--num-features", type=int, default=1000)
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per cell")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--concurrency", default="1,16")
    # internal modes
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--binary", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--auth", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.loadgen:
        args.concurrency = int(args.concurrency)
        run_loadgen(args)
        return
    if args.bare:
        run_bare(args.port, args.num_features)
        return
    batches = [int(b) for b in args.batches.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("STRATUS_SERVE_TOKEN", None)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        repo = args.repo or _build_repo(root, args.num_features)
        token_file = root / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        log_file = open(root / "server.log", "wb")  # noqa: SIM115 (closed below, after the servers)
        s_port, b_port = _free_port(), _free_port()
        stratus = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--repo", repo, "--model", args.model, "--port", str(s_port)]
            + ["--token-file", str(token_file), "--poll-interval", "60"],
            env=env,
            stdout=log_file,
            stderr=log_file,
        )
        bare = subprocess.Popen(
            [sys.executable, __file__, "--bare", "--port", str(b_port), "--num-features", str(args.num_features)],
            env=env,
            stdout=log_file,
            stderr=log_file,
        )
        try:
            _wait_ready(s_port, True, stratus)
            _wait_ready(b_port, False, bare)
            rows = []
            for binary in (False, True):
                for batch in batches:
                    for conc in concurrencies:
                        path = f"/v2/models/{args.model}/infer"
                        s = _cell(s_port, True, path, batch, conc, binary, args)
                        b = _cell(b_port, False, path, batch, conc, binary, args)
                        rows.append((binary, batch, conc, s, b))
                        print(f"  measured {'binary' if binary else 'json'} b={batch} c={conc}", file=sys.stderr)
        finally:
            for proc in (stratus, bare):
                proc.terminate()
                proc.wait(timeout=10)
            log_file.close()
    cpus = os.cpu_count()
    print(f"\nmachine: {cpus} CPU cores, no GPU; load generator on the same cores; {args.duration:g} s per cell\n")
    columns = ["mode", "batch", "conc.", "stratus req/s", "p50 ms", "p99 ms", "bare req/s", "p50 ms", "p99 ms"]
    print("| " + " | ".join([*columns, "stratus/bare", "errors"]) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for binary, batch, conc, s, b in rows:
        ratio = s["rps"] / b["rps"] if b["rps"] else float("nan")
        print(
            f"| {'binary' if binary else 'JSON'} | {batch} | {conc} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | "
            f"{s['p99_ms']:.2f} | {b['rps']:,.0f} | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | {ratio:.2f} | "
            f"{s['errors'] + b['errors']} |"
        )


if __name__ == "__main__":
    main()
