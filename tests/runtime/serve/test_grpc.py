"""The gRPC service with the stock `tritonclient.grpc`: metadata, infer, auth, limits, hot reload.

The client runs in a subprocess (tests/runtime/serve/grpc_client_checks.py) with the protobuf 6
runtime its stubs need, installed once into .venv/stratus-grpc-client from
requirements/grpc-client.txt; this process keeps protobuf 5.29.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from runtime.repository.publish import publish
from tests.conftest import free_port
from tests.runtime.serve.conftest import (
    MAX_BATCH,
    MODEL,
    REPO_ROOT,
    TOKEN,
    reference_output,
    start_server,
    stop_server,
)
from tests.support import NUM_FEATURES

CHECKS = Path(__file__).with_name("grpc_client_checks.py")
CLIENT_DIR = REPO_ROOT / ".venv" / "stratus-grpc-client"
REQUIREMENTS = REPO_ROOT / "requirements" / "grpc-client.txt"


@pytest.fixture(scope="module")
def client_env() -> dict[str, str]:
    """Environment for the client subprocess: protobuf 6 ahead of the venv's 5.29."""
    stamp = CLIENT_DIR / ".requirements"
    if not stamp.exists() or stamp.read_text() != REQUIREMENTS.read_text():
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target"]
        subprocess.run([*cmd, str(CLIENT_DIR), "-r", str(REQUIREMENTS)], check=True, timeout=300)
        stamp.write_text(REQUIREMENTS.read_text())
    return {**os.environ, "PYTHONPATH": str(CLIENT_DIR)}


def _save(tmp_path: Path, x: np.ndarray) -> str:
    path = tmp_path / "x.npy"
    np.save(path, x)
    return str(path)


def test_stock_grpc_client(server, client_env, tmp_path):
    x = np.random.default_rng(11).standard_normal((3, NUM_FEATURES)).astype(np.float32)
    cmd = [sys.executable, str(CHECKS), "checks", server.grpc_target, server.token, MODEL, _save(tmp_path, x)]
    proc = subprocess.run([*cmd, str(MAX_BATCH)], env=client_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["metadata"]["name"] == MODEL and out["metadata"]["versions"] == [str(server.serving_version)]
    assert out["metadata"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", str(NUM_FEATURES)]}]
    assert out["server_metadata"]["name"] == "stratus"
    expected = reference_output(server.artifacts[server.serving_version], x)
    np.testing.assert_allclose(np.array(out["output"]), expected, rtol=1e-5)
    assert out["version"] == str(server.serving_version)
    errors = out["errors"]
    for name in ("no_token", "bad_token", "ready_no_token"):
        assert errors[name] == ["StatusCode.UNAUTHENTICATED", "missing or invalid bearer token"], name
    assert errors["nan"][0] == "StatusCode.INVALID_ARGUMENT" and "finite" in errors["nan"][1]
    assert errors["batch_cap"][0] == "StatusCode.INVALID_ARGUMENT" and "exceeds the cap" in errors["batch_cap"][1]
    assert errors["shape"][0] == "StatusCode.INVALID_ARGUMENT" and "does not fit" in errors["shape"][1]
    assert errors["datatype"][0] == "StatusCode.INVALID_ARGUMENT" and "FP64" in errors["datatype"][1]
    assert errors["unknown_model"][0] == "StatusCode.NOT_FOUND"
    assert errors["too_large"][0] == "StatusCode.RESOURCE_EXHAUSTED"  # over --max-body-bytes
    assert errors["duplicate_auth"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "more than one authorization" in errors["duplicate_auth"][1]


def test_hot_reload_under_grpc_traffic(server, client_env, artifacts, tmp_path):
    """A new version is published while the stock client infers back to back: zero failed calls,
    both versions answered, each with its own model's output."""
    x = np.random.default_rng(12).standard_normal((2, NUM_FEATURES)).astype(np.float32)
    stop = tmp_path / "stop"
    before = server.serving_version
    cmd = [sys.executable, str(CHECKS), "load", server.grpc_target, server.token, MODEL, _save(tmp_path, x)]
    proc = subprocess.Popen([*cmd, str(stop), "60"], env=client_env, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline()) == {"first": str(before)}
        new = publish(artifacts[3], server.repo, model_name=MODEL)
        line = proc.stdout.readline()  # the first answer from the new version
        assert json.loads(line) == {"first": str(new)}, line
        server.serving_version, server.artifacts[new] = new, artifacts[3]
        server.wait_for(lambda: server.is_ready(), "ready after the swap")
        stop.touch()
        done = json.loads(proc.stdout.readline())["done"]
        assert proc.wait(timeout=30) == 0
    finally:
        stop.touch()
        proc.kill()
        proc.wait()
    assert done["num_failures"] == 0, done["failures"]
    assert set(done["versions"]) == {str(before), str(new)}
    for version, artifact in ((before, server.artifacts[before]), (new, artifacts[3])):
        np.testing.assert_allclose(np.array(done["outputs"][str(version)]), reference_output(artifact, x), rtol=1e-5)


FLOOD_CONNECTIONS = 700  # more than the server's open-files limit below
SERVER_NOFILE = 600  # >= what the server needs: --max-connections 64 x 2 (HTTP and gRPC) + 256


def _low_open_files_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_NOFILE, SERVER_NOFILE))


def test_grpc_connections_are_capped_and_cannot_starve_http(artifacts, tmp_path):
    """Anonymous TCP connections to the gRPC port beyond --max-connections are closed by the
    server, so they can never use up the file descriptors the HTTP port needs: with 700 held open
    against a 600-descriptor limit, HTTP liveness still answers fast and at most 64 stay open."""
    repo = tmp_path / "repo"
    publish(artifacts[1], str(repo), model_name=MODEL)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    grpc_port = free_port()
    args = ["--token-file", str(token_file), "--grpc-port", str(grpc_port), "--max-connections", "64"]
    args += ["--max-connections-per-client", "64"]
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
    srv = start_server(str(repo), tmp_path / "server.log", args, env, preexec_fn=_low_open_files_limit)
    socks: list[socket.socket] = []
    try:
        for _ in range(FLOOD_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", grpc_port), timeout=5)
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # preface + SETTINGS
            socks.append(sock)
        time.sleep(1.0)  # let the server accept (and refuse) the backlog
        start = time.perf_counter()
        assert httpx.get(f"{srv.url}/v2/health/live", timeout=5).status_code == 200
        assert time.perf_counter() - start < 0.5
        open_ones = 0
        for sock in socks:
            sock.setblocking(False)
            try:
                while sock.recv(65536):  # the server's SETTINGS, or b"" once it closed the socket
                    pass
            except BlockingIOError:
                open_ones += 1  # nothing more to read and not closed
            except OSError:
                pass  # reset by the server
        assert 0 < open_ones <= 64, open_ones
    finally:
        for sock in socks:
            sock.close()
        stop_server(srv)
    assert srv.proc.returncode == 0
