"""A real `python -m runtime serve` process on 127.0.0.1 for the export tests' published models."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "export-e2e-token-0123456789abcdef01234"


@dataclass
class Served:
    url: str
    model: str
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def infer(self, inputs: list[dict], timeout: float = 30.0) -> dict:
        response = httpx.post(
            f"{self.url}/v2/models/{self.model}/infer", json={"inputs": inputs}, headers=self.auth, timeout=timeout
        )
        assert response.status_code == 200, response.text
        return response.json()


@contextlib.contextmanager
def serving(repo: Path, model: str, work: Path, *extra: str) -> Iterator[Served]:
    """Serve `model` from the local repository `repo` until the block ends (then SIGTERM)."""
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    log = work / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "runtime",
        "serve",
        "--repo",
        str(repo),
        "--model",
        model,
        "--port",
        str(port),
        "--token-file",
        str(token_file),
        "--insecure-plain-http",  # 127.0.0.1; TLS is tests/runtime/serve/test_tls.py's
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    served = Served(url=f"http://127.0.0.1:{port}", model=model, log=log, proc=proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready; log:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{served.url}/v2/health/ready", headers=served.auth, timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
