"""Authenticated limits: binary values, requested outputs, the in-flight body budget, large JSON
decoded off the event loop, and a clean SIGTERM shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from tests.runtime.serve.conftest import MAX_BODY, MODEL, start_server, stop_server
from tests.runtime.serve.test_front import _connect, _read_response, _rejections, _timed_live
from tests.support import NUM_FEATURES

INFER = f"/v2/models/{MODEL}/infer"
BIG_BODY = 16 << 20
BIG_BUDGET = 48 << 20


def _binary_request(x: np.ndarray, datatype: str = "FP32") -> tuple[bytes, dict]:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": datatype}
    tensor["parameters"] = {"binary_data_size": x.nbytes}
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_binary_input_must_be_finite_like_json(server, value):
    x = np.zeros((2, NUM_FEATURES), np.float32)
    x[1, 3] = value
    content, headers = _binary_request(x)
    with server.client(headers=server.auth) as c:
        r = c.post(INFER, content=content, headers=headers)
        assert r.status_code == 422 and "finite" in r.json()["error"], r.text
        x[1, 3] = 0.0
        assert c.post(INFER, content=_binary_request(x)[0], headers=headers).status_code == 200


def test_requested_outputs_are_deduplicated_and_capped(server):
    x = [0.5] * NUM_FEATURES
    base = {"inputs": [{"name": "input", "shape": [1, NUM_FEATURES], "datatype": "FP32", "data": x}]}
    with server.client(headers=server.auth) as c:
        r = c.post(INFER, json={**base, "outputs": [{"name": "output"}] * 3})
        assert r.status_code == 200 and len(r.json()["outputs"]) == 1
        r = c.post(INFER, json={**base, "outputs": [{"name": "output"}] * 65})
        assert r.status_code == 422 and "at most 64" in r.json()["error"]


def _hold_body(server, declared: int, sent: int) -> socket.socket:
    """A connection whose request declared `declared` body bytes and sent only `sent` of them."""
    sock = _connect(server.port)
    auth = f"Authorization: Bearer {server.token}"
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Length: {declared}\r\n\r\n"
    sock.sendall(head.encode() + b" " * sent)
    return sock


def test_body_budget_refuses_with_retry_after(server):
    """Three requests hold the whole budget (3 x MAX_BODY); a fourth gets 503 + Retry-After at once."""
    holders = []
    try:
        holders = [_hold_body(server, MAX_BODY, 1) for _ in range(3)]
        time.sleep(0.2)
        extra = _hold_body(server, MAX_BODY, 1)
        holders.append(extra)
        response = _read_response(extra)
        assert response.startswith(b"HTTP/1.1 503"), response[:100]
        assert b"retry-after: 1" in response.lower() and b"budget" in response
    finally:
        for sock in holders:
            sock.close()
    assert _rejections(server).get("body_budget", 0) >= 1
    x = np.zeros((1, NUM_FEATURES), np.float32)
    content, headers = _binary_request(x)
    with server.client(headers=server.auth) as c:  # the holders' shares were given back
        assert c.post(INFER, content=content, headers=headers).status_code == 200


def test_padded_json_is_decoded_in_the_worker(server):
    """A JSON body above --offload-json-bytes goes to the decode worker: same answers, same errors."""
    x = np.arange(NUM_FEATURES, dtype=np.float32)[None] / 10
    body = {"inputs": [{"name": "input", "shape": [1, NUM_FEATURES], "datatype": "FP32", "data": x.ravel().tolist()}]}
    small = json.dumps(body).encode()
    padded = small[:-1] + b" " * 20000 + b"}"
    with server.client(headers=server.auth) as c:
        a, b = c.post(INFER, content=small), c.post(INFER, content=padded)
        assert a.status_code == b.status_code == 200
        assert a.json()["outputs"] == b.json()["outputs"]
        bad = c.post(INFER, content=padded.replace(b'"FP32"', b'"FP64"'))
        assert bad.status_code == 422 and "datatype 'FP64'" in bad.json()["error"]


@pytest.fixture(scope="module")
def big_server(tmp_path_factory, server):
    """A second server on the same repository with production-sized bodies (16 MiB, 48 MiB budget)."""
    root = tmp_path_factory.mktemp("serve-big")
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
    args = ["--token-file", str(server.token_file), "--max-body-bytes", str(BIG_BODY), "--max-elements", str(1 << 22)]
    args += ["--max-inflight-body-bytes", str(BIG_BUDGET), "--offload-json-bytes", str(256 << 10)]
    args += ["--body-timeout", "5"]
    srv = start_server(server.repo, root / "server.log", args, env)
    srv.token = server.token
    try:
        srv.wait_for(srv.is_ready, "readiness")
        yield srv
    finally:
        stop_server(srv)


def test_bodies_held_back_cannot_grow_memory_past_the_budget(big_server):
    """Ten clients send 15 MiB bodies without the last byte: three fit the 48 MiB budget, the others
    get 503, and resident memory grows by about the budget, not by 150 MiB."""
    rss_before = big_server.rss_bytes()
    size = 15 << 20
    socks: list[socket.socket] = []
    statuses: list[bytes] = []

    def client() -> None:
        sock = _hold_body(big_server, size, 0)
        socks.append(sock)
        with contextlib.suppress(OSError):  # refused with 503 and closed while sending
            sock.sendall(b" " * (size - 1))
        sock.settimeout(0.5)
        try:
            statuses.append(sock.recv(12))
        except OSError:
            statuses.append(b"held")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(10)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        grown = big_server.rss_bytes() - rss_before
        assert statuses.count(b"HTTP/1.1 503") >= 7, statuses
        assert grown < BIG_BUDGET + (24 << 20), grown
    finally:
        for sock in socks:
            sock.close()


def test_large_json_does_not_stall_liveness(big_server, tmp_path):
    """Two clients (curl processes) post 16 MiB of JSON, decoded in the worker process; liveness
    stays fast meanwhile (it took 0.5 s when the event loop decoded them)."""
    data = ",".join(["0.123456789"] * 1_350_000)
    body = f'{{"inputs":[{{"name":"input","shape":[1,{NUM_FEATURES}],"datatype":"FP32","data":[{data}]}}]}}'
    assert BIG_BODY // 2 < len(body) < BIG_BODY
    (tmp_path / "body.json").write_text(body)
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60", "--data-binary"]
    cmd += [f"@{tmp_path / 'body.json'}", "-H", f"Authorization: Bearer {big_server.token}"]
    cmd += ["-H", "Content-Type: application/json", f"{big_server.url}{INFER}"]
    clients = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        live = []
        while any(p.poll() is None for p in clients) and len(live) < 300:
            live.append(_timed_live(big_server))
            time.sleep(0.01)
        codes = [p.communicate(timeout=60)[0] for p in clients]
    finally:
        for p in clients:
            p.kill()
            p.wait()
    assert codes == ["400", "400"]  # 1.35 M values for a [1, 8] tensor
    print(f"liveness max {max(live) * 1e3:.1f} ms over {len(live)} probes")
    assert len(live) >= 3 and max(live) < 0.2, live


def test_sigterm_stops_cleanly(big_server):
    big_server.proc.terminate()
    assert big_server.proc.wait(timeout=30) == 0
    assert "stopped after" in big_server.log_path.read_text()
