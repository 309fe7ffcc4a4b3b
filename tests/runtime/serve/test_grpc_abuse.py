"""The gRPC port against a misbehaving client: frames written by hand (tests/runtime/serve/h2raw.py)
and grpc's own client used the wrong way. Every flood is bounded in streams and seconds and
sent to 127.0.0.1; every socket is closed and the server stopped by the fixture.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import threading
import time

import grpc
import httpx
import numpy as np
import pytest

from runtime.repository.publish import publish
from runtime.serve.grpc_proto import SERVICE, messages
from tests.conftest import free_port
from tests.runtime.serve.conftest import BODY_TIMEOUT, MODEL, TOKEN, start_server, stop_server
from tests.runtime.serve.h2raw import (
    CANCEL,
    END_HEADERS,
    GOAWAY,
    HEADERS,
    RST_STREAM,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    RawConnection,
    frame,
    grpc_headers,
)
from tests.support import NUM_FEATURES

INFER = f"/{SERVICE}/ModelInfer"
AUTH = [("authorization", f"Bearer {TOKEN}")]
MAX_CONCURRENT_RPCS = 64  # the server's default --grpc-max-concurrent-rpcs
X = np.random.default_rng(5).standard_normal((2, NUM_FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def abuse_server(artifacts, tmp_path_factory):
    """A server of its own (floods must not touch the session's): gRPC on, default gRPC limits."""
    root = tmp_path_factory.mktemp("grpc-abuse")
    publish(artifacts[1], str(root / "repo"), model_name=MODEL)
    token_file = root / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    grpc_port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
    args = ["--token-file", str(token_file), "--grpc-port", str(grpc_port)]
    srv = start_server(str(root / "repo"), root / "server.log", args, env)
    srv.grpc_port = grpc_port
    try:
        srv.wait_for(srv.is_ready, "readiness")
        yield srv
    finally:
        stop_server(srv)


def _infer_request():
    m = messages()
    request = m.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    request.raw_input_contents.append(X.tobytes())
    return request


def _infer_call(channel: grpc.Channel):
    m = messages()
    return channel.unary_unary(
        INFER,
        request_serializer=m.ModelInferRequest.SerializeToString,
        response_deserializer=m.ModelInferResponse.FromString,
    )


def _rejections(server, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=server.auth, timeout=5).text
    match = re.search(rf'^stratus_rejections_total\{{reason="{reason}"\}} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_anonymous_streams_hold_no_slot(abuse_server):
    """Anonymous streams that never send their message (more of them than the server's concurrent
    call cap, on three connections held open) leave every authenticated ModelInfer answering."""
    conns = [RawConnection(abuse_server.grpc_port) for _ in range(3)]
    try:
        for conn in conns:
            conn.open_streams(INFER, MAX_CONCURRENT_RPCS // 3 + 2)
        time.sleep(0.5)  # let the server see every stream
        with grpc.insecure_channel(abuse_server.grpc_target) as channel:
            infer = _infer_call(channel)
            for _ in range(5):
                response = infer(_infer_request(), metadata=AUTH, timeout=5)
                assert response.model_version == "1"
    finally:
        for conn in conns:
            conn.close()


def test_call_without_its_message_times_out_and_is_counted(abuse_server):
    """An authenticated call whose message never comes is ended by the server after the body
    timeout (DEADLINE_EXCEEDED, counted as a `body_timeout` refusal), not held until the client
    gives up."""
    before = _rejections(abuse_server, "body_timeout")

    async def silent_call() -> tuple[grpc.StatusCode, str, float]:
        async with grpc.aio.insecure_channel(abuse_server.grpc_target) as channel:
            call = channel.stream_unary(INFER)(metadata=AUTH, timeout=15)
            start = time.perf_counter()
            try:
                await call
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details(), time.perf_counter() - start
            raise AssertionError("the call without a message was answered")

    code, details, seconds = asyncio.run(silent_call())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert "not received within" in details
    assert seconds < BODY_TIMEOUT + 2
    assert _rejections(abuse_server, "body_timeout") == before + 1
    assert "refused (body_timeout)" in abuse_server.log_path.read_text()


def test_malformed_and_ambiguous_messages_are_invalid_argument(abuse_server):
    """A message that is not a ModelInferRequest, and one that sends an input both raw and typed,
    answer INVALID_ARGUMENT (as REST answers 400) without a traceback in the log."""
    with grpc.insecure_channel(abuse_server.grpc_target) as channel:
        raw = channel.unary_unary(INFER)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\xff\xff\xff\xff", metadata=AUTH, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed ModelInferRequest" in info.value.details()
        both = _infer_request()
        both.inputs[0].contents.fp32_contents.extend(X.ravel().tolist())
        with pytest.raises(grpc.RpcError) as info:
            _infer_call(channel)(both, metadata=AUTH, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not both" in info.value.details()
    assert "Traceback" not in abuse_server.log_path.read_text()


FLOOD_SECONDS = 3.0
FLOOD_BATCH = 50  # streams opened and reset per write


def test_rapid_reset_flood_spares_other_connections(abuse_server):
    """One anonymous connection opens and resets streams as fast as it can for 3 s; ModelInfer
    calls on another connection keep succeeding, and the flooding connection is capped (the
    server advertises a per-connection stream cap) or closed."""
    results: list[str] = []
    done = threading.Event()

    def legitimate() -> None:
        with grpc.insecure_channel(abuse_server.grpc_target) as channel:
            infer = _infer_call(channel)
            while not done.is_set():
                try:
                    infer(_infer_request(), metadata=AUTH, timeout=5)
                    results.append("ok")
                except grpc.RpcError as e:
                    results.append(f"{e.code()}: {e.details()}")
                time.sleep(0.02)

    conn = RawConnection(abuse_server.grpc_port)
    client = threading.Thread(target=legitimate, daemon=True)
    client.start()
    block, stream_id, num_streams, closed, throttled = grpc_headers(INFER), 1, 0, False, False
    rst = CANCEL.to_bytes(4, "big")
    deadline = time.monotonic() + FLOOD_SECONDS
    try:
        while time.monotonic() < deadline and not closed:
            ids = range(stream_id, stream_id + 2 * FLOOD_BATCH, 2)
            batch = b"".join(frame(HEADERS, END_HEADERS, i, block) + frame(RST_STREAM, 0, i, rst) for i in ids)
            try:
                conn.sock.sendall(batch)
            except TimeoutError:
                throttled = True  # the server stopped reading this connection for 5 s
                break
            except OSError:
                closed = True
                break
            num_streams += FLOOD_BATCH
            stream_id += 2 * FLOOD_BATCH
            try:
                while select.select([conn.sock], [], [], 0)[0]:  # what the server sent, if anything
                    chunk = conn.sock.recv(1 << 16)
                    if not chunk:
                        closed = True
                        break
                    conn.buffer += chunk
            except OSError:
                closed = True
    finally:
        done.set()
        client.join(timeout=10)
        conn.close()
    failures = [r for r in results if r != "ok"]
    assert not failures, f"{len(failures)} of {len(results)} calls failed during {num_streams} resets: {failures[:3]}"
    assert len(results) >= 20, results
    goaway = GOAWAY in _frame_kinds(conn.buffer)
    capped = conn.server_settings.get(SETTINGS_MAX_CONCURRENT_STREAMS, 1 << 31) <= 100
    assert capped or goaway or closed or throttled, (num_streams, conn.server_settings)
    assert httpx.get(f"{abuse_server.url}/v2/health/live", timeout=5).status_code == 200


def _frame_kinds(buffer: bytes) -> set[int]:
    kinds, offset = set(), 0
    while offset + 9 <= len(buffer):
        kinds.add(buffer[offset + 3])
        offset += 9 + int.from_bytes(buffer[offset : offset + 3], "big")
    return kinds
