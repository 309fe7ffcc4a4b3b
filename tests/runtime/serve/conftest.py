"""Fixtures for the serving end-to-end tests: real artifacts, a real server process over HTTP.

The server under test is `python -m runtime serve` (uvicorn on 127.0.0.1, a free port), started
once per session; tests talk to it with httpx and with the stock Triton client. It serves plain
HTTP (`--insecure-plain-http`, on 127.0.0.1 only) unless `start_server` is given TLS files
(tests/runtime/serve/test_tls.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from runtime.repository.publish import publish
from tests.conftest import free_port
from tests.support import build_artifact

MODEL = "tiny"
MAX_BATCH = 64
MAX_ELEMENTS = 256  # < MAX_BATCH * NUM_FEATURES, so the element cap is reachable on its own
MAX_BODY = 64 * 1024
BODY_TIMEOUT = 1.5
HEADER_TIMEOUT = 2.0
INFLIGHT_BODY = 3 * MAX_BODY  # the global body budget: three full bodies
OFFLOAD_JSON = 16 * 1024  # JSON bodies above this are decoded in the worker process
TOKEN = "e2e-token-0123456789abcdef0123456789"
REPO_ROOT = Path(__file__).resolve().parents[3]


def reference_output(artifact: Path, x: np.ndarray) -> np.ndarray:
    """What the artifact's model computes for x (ONNX Runtime in this process)."""
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@dataclass
class Server:
    """A running `python -m runtime serve` process."""

    url: str
    token: str
    proc: subprocess.Popen
    log_path: Path
    repo: str
    serving_version: int = 1
    token_file: Path | None = None
    artifacts: dict[int, Path] = field(default_factory=dict)
    ca: Path | None = None
    """The CA file that verifies the server's certificate (None: plain HTTP)."""

    @property
    def verify(self) -> str | bool:
        """httpx's `verify=` for this server."""
        return str(self.ca) if self.ca else True

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **{"verify": self.verify, **kwargs})

    def log_records(self) -> list[dict]:
        records = []
        for line in self.log_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append({"unparsed": line})
        return records

    def wait_for(self, predicate, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); log:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; log tail:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)

    def is_ready(self) -> bool:
        try:
            response = httpx.get(f"{self.url}/v2/health/ready", headers=self.auth, timeout=2, verify=self.verify)
            return response.status_code == 200
        except httpx.TransportError:
            return False

    grpc_port: int = 0

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss_bytes(self) -> int:
        """Resident memory of the server process (not its decode worker)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def is_live(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/health/live", timeout=2, verify=self.verify).status_code == 200
        except httpx.TransportError:
            return False


def start_server(
    repo: str,
    log_path: Path,
    extra_args: list[str],
    env: dict[str, str],
    preexec_fn=None,
    tls: tuple[Path, Path, Path] | None = None,
) -> Server:
    """Start a server and wait for liveness. `tls`: (certificate, key, CA) files; None: plain HTTP."""
    port = free_port()
    # plain HTTP on 127.0.0.1 only
    security = ["--insecure-plain-http"] if tls is None else ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    args = [
        sys.executable,
        "-m",
        "runtime",
        "serve",
        "--repo",
        repo,
        "--model",
        MODEL,
        "--port",
        str(port),
        "--max-batch-size",
        str(MAX_BATCH),
        "--max-elements",
        str(MAX_ELEMENTS),
        "--max-body-bytes",
        str(MAX_BODY),
        "--body-timeout",
        str(BODY_TIMEOUT),
        "--header-timeout",
        str(HEADER_TIMEOUT),
        "--max-inflight-body-bytes",
        str(INFLIGHT_BODY),
        "--offload-json-bytes",
        str(OFFLOAD_JSON),
        *security,
        *extra_args,
    ]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
        )
    scheme = "http" if tls is None else "https"
    server = Server(url=f"{scheme}://127.0.0.1:{port}", token=TOKEN, proc=proc, log_path=log_path, repo=repo)
    server.ca = None if tls is None else tls[2]
    server.wait_for(server.is_live, "liveness")
    return server


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict[int, Path]:
    """Three distinct real artifacts (seeds 1, 2, 3), built once."""
    root = tmp_path_factory.mktemp("artifacts")
    return {seed: build_artifact(root / f"seed-{seed}", seed) for seed in (1, 2, 3)}


@pytest.fixture(scope="session")
def server(tmp_path_factory, artifacts) -> Server:
    """The server on a local repository holding version 1 (artifact seed 1), ready to answer."""
    root = tmp_path_factory.mktemp("serve-local")
    repo = root / "repo"
    assert publish(artifacts[1], str(repo), model_name=MODEL) == 1
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
    grpc_port = free_port()
    args = ["--token-file", str(token_file), "--poll-interval", "0.2", "--grpc-port", str(grpc_port)]
    srv = start_server(str(repo), root / "server.log", args, env)
    srv.grpc_port = grpc_port
    srv.artifacts = {1: artifacts[1]}
    srv.token_file = token_file
    try:
        srv.wait_for(srv.is_ready, "readiness")
        yield srv
    finally:
        stop_server(srv)


GENAI_MODEL = "hf-tiny"
"""The name `scripts/launch.sh --preset hf-tiny` publishes its model under."""
GENAI_MAX_TOKENS = 64
"""--generate-max-tokens of the language-model server."""


@pytest.fixture(scope="session")
def genai_artifact(hf_launch) -> Path:
    """The int4 onnxruntime-genai artifact (KV cache) that `scripts/launch.sh --preset hf-tiny`
    exported, gated and staged: the session's tiny Llama after its ZeRO-3 fine-tune."""
    return hf_launch.run_dir / "export"


@pytest.fixture(scope="session")
def genai_server(genai_artifact, tmp_path_factory):
    """A server of the genai artifact (version 1 of GENAI_MODEL in a local repository), ready."""
    from tests.runtime.export.serving import serving

    work = tmp_path_factory.mktemp("genai-serve")
    repo = work / "repo"
    assert publish(genai_artifact, str(repo), model_name=GENAI_MODEL) == 1
    extra = (
        "--generate-max-tokens",
        str(GENAI_MAX_TOKENS),
        "--generate-max-concurrency",
        "4",
        "--poll-interval",
        "0.5",
    )
    with serving(repo, GENAI_MODEL, work, *extra) as server:
        yield server
