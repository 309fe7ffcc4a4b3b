"""The servers bench/serve.py compares, each its own process on 127.0.0.1 with one worker.

- `stratus`: `python -m runtime serve` as deployed (front limits, auth, metrics, JSON access log),
  plain HTTP and gRPC (`--insecure-plain-http`);
- `stratus+tls`: the same over TLS on both ports (`--tls-cert/--tls-key`, a certificate from a CA
  made at bench time; `Running.ca` is the CA file the clients trust);
- `before`: the same command from an earlier commit (`git archive`), before the front's limits;
- `bare`: the same ASGI stack decoding and validating the same request with the same code and
  returning a fixed tensor (no auth, no model, no metrics, no log): the protocol's ceiling;
- `bare+model`: `bare` that also runs the model (ONNX Runtime, stratus's session options, on the
  event loop as stratus runs a model this fast): the ceiling of a server that runs the model;
- both bare servers also answer gRPC ModelInfer (`--grpc-port`) on the same `grpc.aio` server,
  message classes, request conversion and decoder as `stratus serve`, in the same event loop
  (uvloop), with the same fixed tensor or model call: the ceiling of the gRPC stack itself;
- `kserve`: KServe's `ModelServer` with a `kserve.Model` on the same ONNX file (bench/_kserve_model.py)
  in its own virtualenv, built from bench/kserve-requirements.txt on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
KSERVE_VENV = ROOT / ".venv" / "bench-kserve"  # git-ignored with .venv/
KSERVE_REQUIREMENTS = ROOT / "bench" / "kserve-requirements.txt"


@dataclass
class Running:
    name: str
    proc: subprocess.Popen
    http_port: int
    grpc_port: int | None = None
    ca: Path | None = None
    """The CA certificate that verifies the server's TLS certificate on both ports; None: plaintext."""

    def url(self, path: str) -> str:
        return f"{'https' if self.ca else 'http'}://{HOST}:{self.http_port}{path}"


def wait_ready(server: Running, path: str, token: str | None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    context = ssl.create_default_context(cafile=server.ca) if server.ca else None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}")
        try:
            req = urllib.request.Request(server.url(path), headers=headers)  # noqa: S310 (http/https only)
            urllib.request.urlopen(req, timeout=2, context=context)  # noqa: S310 (loopback URL built here)
            return
        except OSError as e:
            if path == "/" and "HTTP Error" in str(e):
                return  # the bare app answers (an error for GET /), so it is up
            time.sleep(0.3)
    raise TimeoutError(f"{server.name} did not become ready")


def ensure_kserve_venv() -> Path:
    """The KServe virtualenv's python, (re)built when bench/kserve-requirements.txt changed."""
    stamp = KSERVE_VENV / ".requirements.sha256"
    want = hashlib.sha256(KSERVE_REQUIREMENTS.read_bytes()).hexdigest()
    python = KSERVE_VENV / "bin" / "python"
    if not python.exists() or not stamp.exists() or stamp.read_text() != want:
        print(f"  building {KSERVE_VENV} from {KSERVE_REQUIREMENTS.name} (a few minutes)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(KSERVE_REQUIREMENTS)]
        subprocess.run(pip, check=True, timeout=1800)
        stamp.write_text(want)
    return python


def checkout(ref: str, dest: Path) -> Path:
    """The `runtime/` package of commit `ref`, unpacked into dest (the working tree is not touched)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "runtime"], cwd=ROOT, check=True, capture_output=True).stdout
    tar = dest / "runtime.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    return dest


def start(
    name: str, cmd: list[str], log, http_port: int, grpc_port=None, cwd=ROOT, pythonpath=ROOT, ca=None
) -> Running:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    env.pop("STRATUS_SERVE_TOKEN", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=log)
    return Running(name, proc, http_port, grpc_port, ca)


def stop(servers: list[Running]) -> None:
    for server in servers:
        server.proc.terminate()
    for server in servers:
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


# --- the bare endpoint -------------------------------------------------------------------------


def _specs(num_features: int) -> tuple[dict, dict]:
    from runtime.serve.protocol import TensorSpec

    inputs = {"input": TensorSpec("input", "FP32", (-1, num_features))}
    outputs = {"output": TensorSpec("output", "FP32", (-1, 1))}
    return inputs, outputs


def _session(model_file: str | None):
    """ONNX Runtime session with the options of runtime.serve, or None (answer a fixed tensor)."""
    if not model_file:
        return None
    import onnxruntime as ort

    from runtime.serve.model import session_options

    return ort.InferenceSession(model_file, session_options(), providers=["CPUExecutionProvider"])


def _results(session, outputs: dict, req) -> dict[str, np.ndarray]:
    if session is not None:
        return dict(zip(outputs, session.run(list(outputs), req.inputs), strict=True))
    return {"output": np.full((next(iter(req.inputs.values())).shape[0], 1), 0.5, np.float32)}


def bare_app_factory(num_features: int, model: str, session=None):
    """ASGI app: reads the body, decodes + validates it like runtime.serve, returns a fixed tensor
    (or, with `session`, what ONNX Runtime computes)."""
    from runtime.serve.protocol import Limits, RequestError, decode_infer_request, encode_infer_response

    inputs, outputs = _specs(num_features)
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
        raw = dict(scope["headers"]).get(b"inference-header-content-length")
        try:
            req = decode_infer_request(b"".join(chunks), int(raw) if raw else None, inputs, outputs, limits)
        except RequestError as e:
            await send({"type": "http.response.start", "status": e.status, "headers": []})
            await send({"type": "http.response.body", "body": e.message.encode()})
            return
        results = _results(session, outputs, req)
        body, json_length = encode_infer_response(model, "1", req, results, outputs)
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if json_length is not None:
            hdrs.append((b"inference-header-content-length", str(json_length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    return app


async def start_bare_grpc(port: int, num_features: int, model: str, session=None):
    """gRPC ModelInfer on grpc.aio: the request converted and decoded as runtime.serve does it (no
    auth, no metrics, no log, no limits beyond the decoder's), a fixed tensor or the model's output."""
    import grpc

    from runtime.serve.grpc_proto import SERVICE, messages
    from runtime.serve.grpc_service import as_binary_request, infer_response
    from runtime.serve.protocol import Limits, RequestError, decode_infer_request

    m = messages()
    inputs, outputs = _specs(num_features)
    limits = Limits()

    async def infer(request, context):
        try:
            head, payload = as_binary_request(request)
            req = decode_infer_request(head + payload, len(head), inputs, outputs, limits)
        except RequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
        return infer_response(model, "1", request.id, req, _results(session, outputs, req), outputs)

    handler = grpc.unary_unary_rpc_method_handler(
        infer,
        request_deserializer=m.ModelInferRequest.FromString,
        response_serializer=m.ModelInferResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),))
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    return server


async def _serve_bare(a) -> None:
    import uvicorn

    session = _session(a.model_file)
    if a.grpc_port:  # started before HTTP, in the same loop, as `stratus serve` does
        grpc_server = await start_bare_grpc(a.grpc_port, a.num_features, a.model, session)
    config = uvicorn.Config(
        bare_app_factory(a.num_features, a.model, session),
        host=HOST,
        port=a.port,
        loop="none",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        if a.grpc_port:
            await grpc_server.stop(grace=1)


if __name__ == "__main__":
    import uvloop

    p = argparse.ArgumentParser(description="the bare endpoint of bench/serve.py")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, help="also answer gRPC ModelInfer on this port")
    p.add_argument("--num-features", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--model-file", help="also run this ONNX file per request (the bare+model server)")
    uvloop.run(_serve_bare(p.parse_args()))
