"""Default-deny auth, input limits, a bounded fuzz loop, and refusing to start without a token."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import zlib

import httpx
import pytest

from runtime.serve.app import ROUTES
from runtime.serve.command import TokenError, load_token
from tests.runtime.serve.conftest import BODY_TIMEOUT, MAX_BODY, MODEL, REPO_ROOT
from tests.support import NUM_FEATURES

INFER = f"/v2/models/{MODEL}/infer"


def _concrete(path: str, version: int) -> str:
    return path.replace("{model}", MODEL).replace("{version}", str(version))


def _valid(batch: int = 1) -> dict:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": [batch, NUM_FEATURES],
                "datatype": "FP32",
                "data": [0.5] * (batch * NUM_FEATURES),
            }
        ]
    }


# --- auth --------------------------------------------------------------------------------------


def test_route_table_is_default_deny(server):
    """Walk the app's own route table: every route but liveness and server readiness (the load
    balancer's health check sends no token) answers 401 without a valid token, and answers something
    other than 401 with it (so the check is not simply broken)."""
    public = {(r.method, r.path) for r in ROUTES if r.public}
    assert public == {("GET", "/v2/health/live"), ("GET", "/v2/health/ready")}
    bad_headers = [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {server.token}x"},
        {"Authorization": f"Basic {server.token}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {server.token[:-1]}"},
        {"Authorization": server.token},
    ]
    with server.client() as c:
        for route in ROUTES:
            path = _concrete(route.path, server.serving_version)

            def send(headers, path=path, method=route.method):
                return c.request(method, path, headers=headers, json=_valid())

            if route.public:
                assert send({}).status_code == 200, route
                continue
            for headers in bad_headers:
                r = send(headers)
                assert r.status_code == 401, (route, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
            ok = send(server.auth)
            assert ok.status_code == 200, (route, ok.status_code, ok.text)


@pytest.mark.parametrize("path", ["/", "/docs", "/v2/repository/index", "/v2/models/tiny/load", "/metrics/x"])
def test_unknown_paths_need_the_token_too(server, path):
    with server.client() as c:
        assert c.post(path).status_code == 401
        assert c.post(path, headers=server.auth).status_code in (404, 405)


def test_token_sources(tmp_path):
    f = tmp_path / "token"
    f.write_text("t" * 32 + "\n")
    f.chmod(0o600)
    assert load_token(str(f), None, environ={}) == ("t" * 32, f"file {f}")
    assert load_token(None, None, environ={"STRATUS_SERVE_TOKEN": "e" * 20})[0] == "e" * 20
    with pytest.raises(TokenError, match="no serving token"):
        load_token(None, None, environ={})
    with pytest.raises(TokenError, match="exactly one source"):
        load_token(str(f), None, environ={"STRATUS_SERVE_TOKEN": "e" * 20})
    f.chmod(0o644)
    with pytest.raises(TokenError, match="world-readable"):
        load_token(str(f), None, environ={})
    with pytest.raises(TokenError, match="at least 16"):
        load_token(None, None, environ={"STRATUS_SERVE_TOKEN": "short"})
    with pytest.raises(TokenError, match="cannot read"):
        load_token(str(tmp_path / "missing"), None, environ={})


def test_token_rotation_on_sighup(server):
    """`kill -HUP` re-reads the token source: the old token stops working, the new one works."""
    old, new = server.token, "rotated-token-" + "r" * 32
    server.token_file.write_text(new)
    try:
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(
            lambda: httpx.get(f"{server.url}/v2", headers={"Authorization": f"Bearer {new}"}).status_code == 200,
            "rotation",
        )
        assert httpx.get(f"{server.url}/v2", headers={"Authorization": f"Bearer {old}"}).status_code == 401
        server.token = new
        # a broken source keeps the current token instead of locking everyone out
        server.token_file.write_text("short")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(lambda: "token reload failed" in server.log_path.read_text(), "failed reload logged")
        assert httpx.get(f"{server.url}/v2", headers=server.auth).status_code == 200
    finally:
        server.token_file.write_text(server.token)


def test_server_refuses_to_start_without_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "serve",
            "--repo",
            str(tmp_path),
            "--model",
            MODEL,
            "--port",
            "1",
            "--insecure-plain-http",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no serving token" in proc.stderr and "--token-file" in proc.stderr


# --- bad input ---------------------------------------------------------------------------------


def _with(**changes) -> dict:
    body = _valid(2)
    body["inputs"][0].update(changes)
    return body


BAD_JSON_CASES = [
    ("not-json", b"{not json", 400, "not valid JSON"),
    ("json-array", b"[1, 2]", 400, "JSON object"),
    ("no-inputs", b"{}", 400, "'inputs'"),
    ("empty-inputs", {"inputs": []}, 400, "'inputs'"),
    ("input-not-object", {"inputs": [1]}, 400, "string 'name'"),
    ("unknown-input", _with(name="x"), 422, "unknown input 'x'"),
    ("duplicate-input", {"inputs": _valid()["inputs"] * 2}, 400, "given twice"),
    ("no-datatype", _with(datatype=None), 400, "'datatype'"),
    ("wrong-datatype", _with(datatype="FP64"), 422, "datatype 'FP64'"),
    ("unknown-datatype", _with(datatype="FLOAT"), 422, "datatype 'FLOAT'"),
    ("shape-not-list", _with(shape="2x8"), 400, "'shape'"),
    ("shape-bool", _with(shape=[True, NUM_FEATURES]), 400, "'shape'"),
    ("rank", _with(shape=[16]), 422, "rank 1"),
    ("shape", _with(shape=[2, 7]), 422, "does not fit"),
    ("zero-dim", _with(shape=[0, NUM_FEATURES], data=[]), 422, "does not fit"),
    ("negative-dim", _with(shape=[-2, NUM_FEATURES]), 422, "does not fit"),
    ("batch-cap", _with(shape=[65, NUM_FEATURES], data=[0.0] * 65 * NUM_FEATURES), 422, "exceeds the cap of 64"),
    ("element-cap", _with(shape=[40, NUM_FEATURES], data=[0.0] * 40 * NUM_FEATURES), 422, "elements exceed"),
    ("count", _with(data=[0.0] * 3), 400, "has 3 values"),
    ("strings", _with(data=["a"] * 2 * NUM_FEATURES), 400, "must hold FP32"),
    ("ragged", _with(data=[[0.0] * NUM_FEATURES, [0.0]]), 400, "ragged"),
    ("null-data", _with(data=None), 400, "'data'"),
    ("nan-literal", b'{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[NaN]}]}', 400, "JSON"),
    ("overflow", _with(data=[1e39] * 2 * NUM_FEATURES), 422, "finite"),
    ("unknown-output", {**_valid(), "outputs": [{"name": "nope"}]}, 400, "unknown output"),
    ("binary-output-type", {**_valid(), "parameters": {"binary_data_output": "yes"}}, 400, "binary_data_output"),
    ("both-data-and-binary", _with(parameters={"binary_data_size": 64}), 400, "not both"),
]


@pytest.mark.parametrize(
    ("body", "status", "message"), [c[1:] for c in BAD_JSON_CASES], ids=[c[0] for c in BAD_JSON_CASES]
)
def test_bad_json_requests(server, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with server.client(headers=server.auth) as c:
        r = c.post(INFER, content=content)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def _binary(json_header: dict, payload: bytes, header_length: str | None = None):
    head = json.dumps(json_header).encode()
    return head + payload, {"Inference-Header-Content-Length": header_length or str(len(head))}


def _bin_input(size: int, batch: int = 1) -> dict:
    shape = [batch, NUM_FEATURES]
    return {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}]}


BAD_BINARY_CASES = [
    ("header-length-not-int", *_binary(_bin_input(32), b"\0" * 32, "abc"), 400, "non-negative integer"),
    ("header-length-negative", *_binary(_bin_input(32), b"\0" * 32, "-5"), 400, "non-negative integer"),
    ("header-length-past-body", *_binary(_bin_input(32), b"\0" * 32, "99999"), 400, "outside the body"),
    ("size-not-matching-shape", *_binary(_bin_input(30), b"\0" * 30), 400, "needs 32 bytes"),
    ("data-shorter-than-size", *_binary(_bin_input(32), b"\0" * 31), 400, "binary data ends"),
    ("unclaimed-bytes", *_binary(_bin_input(32), b"\0" * 40), 400, "not claimed"),
    ("size-negative", *_binary(_bin_input(-1), b""), 400, "non-negative integer"),
    ("nan-binary-is-fine-shape-not", *_binary(_bin_input(64, batch=2), b"\0" * 64), 200, ""),
]


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"), [c[1:] for c in BAD_BINARY_CASES], ids=[c[0] for c in BAD_BINARY_CASES]
)
def test_bad_binary_requests(server, content, headers, status, message):
    with server.client(headers=server.auth) as c:
        r = c.post(INFER, content=content, headers=headers)
    assert r.status_code == status, r.text
    if status != 200:
        assert message in r.json()["error"]


def test_routing_errors(server):
    with server.client(headers=server.auth) as c:
        assert c.post("/v2/models/other/infer", json=_valid()).status_code == 404
        assert c.post(f"/v2/models/{MODEL}/versions/999/infer", json=_valid()).status_code == 404
        assert c.get(INFER).status_code == 405
        assert c.delete(f"/v2/models/{MODEL}").status_code == 405


def test_body_cap_content_length(server):
    with server.client(headers=server.auth) as c:
        r = c.post(INFER, content=b" " * (MAX_BODY + 1))
    assert r.status_code == 413 and "exceeds the cap" in r.json()["error"]


def test_body_cap_chunked(server):
    def chunks():
        for _ in range(MAX_BODY // 4096 + 2):
            yield b" " * 4096

    with server.client(headers=server.auth) as c:
        r = c.post(INFER, content=chunks())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413


@pytest.mark.parametrize("sent", [0, 10], ids=["no-body-yet", "partial-body"])
def test_slow_body_times_out(server, sent):
    head = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + 10) as sock:
        sock.sendall(head + b"{" * sent)
        response = b""
        while b"}" not in response and (chunk := sock.recv(65536)):
            response += chunk
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b"not received within" in response


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_body_cap_compressed_bomb(server, encoding):
    raw = b" " * (MAX_BODY * 8)  # compresses to a few hundred bytes
    packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    assert len(packed) < MAX_BODY // 10
    with server.client(headers=server.auth) as c:
        r = c.post(INFER, content=packed, headers={"Content-Encoding": encoding})
    assert r.status_code == 413 and "decompressed" in r.json()["error"]


@pytest.mark.parametrize(
    ("encoding", "content", "status"),
    [("br", b"\x00", 415), ("gzip", b"not gzip at all", 400), ("gzip", gzip.compress(b"{}")[:-6], 400)],
    ids=["unsupported", "corrupt", "truncated"],
)
def test_bad_content_encoding(server, encoding, content, status):
    with server.client(headers=server.auth) as c:
        r = c.post(INFER, content=content, headers={"Content-Encoding": encoding})
    assert r.status_code == status, r.text


# --- fuzz --------------------------------------------------------------------------------------


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if kind == 2:
        return rng.choice([0.5, -1e308, 1e-320, 3.4e38, rng.uniform(-1e6, 1e6)])
    if kind in (3, 4):
        return rng.choice(["", "input", "FP32", "BYTES", "\u2603", "x" * 300, "output", "binary_data_size"])
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(6))]
    keys = ["name", "shape", "datatype", "data", "inputs", "outputs", "parameters", "id", "binary_data_size"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def _mutate(rng: random.Random, node):
    if isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(list(node))
        node[key] = _mutate(rng, node[key]) if rng.random() < 0.6 else _random_json(rng)
        return node
    if isinstance(node, list) and node and rng.random() < 0.7:
        i = rng.randrange(len(node))
        node[i] = _mutate(rng, node[i]) if rng.random() < 0.6 else _random_json(rng)
        return node
    return _random_json(rng)


def test_fuzz_never_5xx(server):
    rng = random.Random(20261130)
    seen: dict[int, int] = {}
    with server.client(headers=server.auth) as c:
        for _ in range(400):
            headers = {}
            kind = rng.randrange(5)
            if kind == 0:
                content = rng.randbytes(rng.randrange(0, 2048))
            elif kind == 1:
                content = json.dumps(_random_json(rng)).encode()
            elif kind == 2:
                content = json.dumps(_mutate(rng, _valid(rng.randrange(1, 4)))).encode()
            elif kind == 3:
                head = json.dumps(_mutate(rng, _bin_input(32)) if rng.random() < 0.5 else _bin_input(32)).encode()
                content = head + rng.randbytes(rng.choice([0, 31, 32, 33]))
                headers["Inference-Header-Content-Length"] = str(rng.choice([len(head), 0, len(head) + 1, 10**9]))
            else:
                content = gzip.compress(json.dumps(_mutate(rng, _valid())).encode())
                content = content[: rng.randrange(len(content) + 1)]
                headers["Content-Encoding"] = rng.choice(["gzip", "deflate", "identity"])
            r = c.post(INFER, content=content, headers=headers)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (kind, content[:300], headers, r.text)
            if r.status_code != 200:
                assert r.json()["error"]
    assert set(seen) - {200} and seen.get(400)  # the loop did exercise errors
    assert server.is_ready()
