"""The HTTP front: what an anonymous client can do to the server before it authenticates.

Each test reproduces one attack that used to hold the server (idle connections exhausting the
cap, slow or huge request heads) against the real server process, and checks that liveness and
the metrics stay right. Every connection a test opens is closed in a `finally`.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

import httpx
import pytest

from tests.runtime.serve.conftest import HEADER_TIMEOUT

NUM_IDLE = 1100
IDLE_SOURCES = [f"127.0.0.{i}" for i in range(2, 7)]  # 220 connections from each: under the per-client cap


def _connect(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _read_response(sock: socket.socket) -> bytes:
    """Read until the server closes (every front rejection closes) or 10 s pass."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _timed_live(server) -> float:
    """Seconds from connect to a complete 200 answer of GET /v2/health/live (raw socket: no client
    library set-up in the measurement)."""
    start = time.perf_counter()
    sock = _connect(server.port)
    try:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while b"\r\n\r\n" not in response and (chunk := sock.recv(4096)):
            response += chunk
    finally:
        sock.close()
    elapsed = time.perf_counter() - start
    assert response.startswith(b"HTTP/1.1 200"), response[:100]
    return elapsed


def _rejections(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", headers=server.auth, timeout=5).text
    return {m[0]: float(m[1]) for m in re.findall(r'^stratus_rejections_total\{reason="(\w+)"\} (\S+)$', text, re.M)}


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def test_idle_connections_cannot_lock_out_liveness(server):
    """1,100 idle connections (more than --max-connections 1024, from five addresses) plus one half
    sent request line: liveness still answers 200 within 100 ms, the longest-idle connections are
    closed to make room, and every idle one is closed after the header timeout."""
    before = _rejections(server)
    socks: list[socket.socket] = []
    try:
        for i in range(NUM_IDLE):
            socks.append(_connect(server.port, IDLE_SOURCES[i % len(IDLE_SOURCES)]))
        slow = _connect(server.port)
        socks.append(slow)
        slow.sendall(b"GET /v2/health/li")
        time.sleep(0.5)  # let the server accept the backlog
        assert _timed_live(server) < 0.1
        with server.client(headers=server.auth) as c:
            assert c.get("/v2/health/ready").status_code == 200
        time.sleep(HEADER_TIMEOUT + 0.5)
        response = _read_response(slow)
        assert response.startswith(b"HTTP/1.1 408"), response[:100]
        assert b"request head not received within" in response
        for sock in socks[:50]:  # the idle ones were closed without a word
            assert sock.recv(1) == b""
    finally:
        _close_all(socks)
    after = _rejections(server)
    assert after.get("evicted_idle", 0) - before.get("evicted_idle", 0) >= NUM_IDLE + 1 - 1024
    assert after.get("idle_timeout", 0) - before.get("idle_timeout", 0) >= 900
    assert after.get("header_timeout", 0) - before.get("header_timeout", 0) >= 1
    log = server.log_path.read_text()
    assert "refused (evicted_idle) from 127.0.0." in log and "refused (header_timeout) from 127.0.0.1" in log


def test_connections_per_client_address_are_capped(server):
    socks: list[socket.socket] = []
    try:
        for _ in range(256):  # the default --max-connections-per-client
            socks.append(_connect(server.port, "127.0.0.9"))
        extra = _connect(server.port, "127.0.0.9")
        socks.append(extra)
        response = _read_response(extra)
        assert response.startswith(b"HTTP/1.1 503"), response[:100]
        assert b"retry-after: 1" in response.lower() and b"connections from your address" in response
        assert _timed_live(server) < 0.1  # other addresses are not affected
    finally:
        _close_all(socks)
    assert _rejections(server).get("client_connections", 0) >= 1


def _send_big_head(server, head: bytes, filler_bytes: int) -> tuple[bytes, float, list[float]]:
    """Send `head` + `filler_bytes` of 'a' without end of head; return (response, seconds to it, liveness times)."""
    sock = _connect(server.port)
    errors: list[BaseException] = []

    def sender() -> None:
        chunk = b"a" * (1 << 20)
        try:
            sock.sendall(head)
            for _ in range(filler_bytes // len(chunk)):
                sock.sendall(chunk)
        except OSError as e:  # the server closed after refusing: expected
            errors.append(e)

    thread = threading.Thread(target=sender, daemon=True)
    start = time.perf_counter()
    try:
        thread.start()
        first = sock.recv(65536)
        elapsed = time.perf_counter() - start
        live = [_timed_live(server) for _ in range(3)]
        thread.join(timeout=30)
        assert not thread.is_alive()
        return first, elapsed, live
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ", b"431", "headers_too_large"),
        (b"GET /v2/health/live?q=", b"414", "request_line_too_long"),
    ],
    ids=["64MiB-header", "64MiB-url"],
)
def test_huge_request_head_is_refused_fast_and_small(server, head, status, reason):
    rss_before = server.rss_bytes()
    response, elapsed, live = _send_big_head(server, head, 64 << 20)
    assert response.startswith(b"HTTP/1.1 " + status), response[:100]
    assert elapsed < 0.1, elapsed
    assert max(live) < 0.1, live
    assert server.rss_bytes() - rss_before < 20 << 20
    assert _rejections(server).get(reason, 0) >= 1


def test_server_readiness_answers_without_the_token_for_the_load_balancer_and_nothing_else_does(server):
    # The NLB's HTTPS health check (infra/components/balancer.py) cannot send a bearer token.
    with server.client() as c:
        assert c.get("/v2/health/ready").status_code == 200
        for path in ("/v2", "/v2/models/tiny", "/v2/models/tiny/ready", "/metrics"):
            assert c.get(path).status_code == 401, path


def test_head_works_wherever_get_does(server):
    with server.client() as c:
        r = c.head("/v2/health/live")
        assert r.status_code == 200 and r.content == b""
        assert c.head("/v2").status_code == 401
        for path in ("/v2", "/v2/health/ready", "/v2/models/tiny", "/v2/models/tiny/ready", "/metrics"):
            get, head = c.get(path, headers=server.auth), c.head(path, headers=server.auth)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b""
            if path != "/metrics":  # its counters move between the two requests
                assert head.headers["content-length"] == get.headers["content-length"], path


def test_duplicate_authorization_is_refused(server):
    headers = [("Authorization", f"Bearer {server.token}"), ("Authorization", "Bearer someone-else-0123456789")]
    with server.client() as c:
        r = c.get("/v2", headers=headers)
        assert r.status_code == 400 and "more than one Authorization" in r.json()["error"]
        twice_good = [("Authorization", f"Bearer {server.token}")] * 2
        assert c.get("/v2", headers=twice_good).status_code == 400
        assert c.get("/v2", headers=server.auth).status_code == 200
    assert _rejections(server).get("duplicate_authorization", 0) >= 2


def test_malformed_request_is_counted(server):
    sock = _connect(server.port)
    try:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 400")
    finally:
        sock.close()
    assert _rejections(server).get("bad_request", 0) >= 1


def test_forwarded_headers_do_not_change_the_logged_client(server):
    """No proxy is trusted: X-Forwarded-For from a client (here on 127.0.0.1, the address uvicorn
    trusts by default) must not replace the socket's address in the access log."""
    path = f"/xff-probe-{time.monotonic_ns()}"
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    assert httpx.get(f"{server.url}{path}", headers=forged, timeout=5).status_code == 401

    def logged() -> list[dict]:
        return [r for r in server.log_records() if r.get("path") == path]

    server.wait_for(lambda: logged(), "the probe's access-log line")
    assert [r["client"] for r in logged()] == ["127.0.0.1"]
