"""SIGTERM drains a real `stratus serve` process under load (runtime.serve.drain).

Bounded client loops (at most MAX_REQUESTS requests or MAX_SECONDS each, 127.0.0.1 only) keep
inferring on kept-alive HTTP connections and a gRPC channel while a slow request (its body
trickles in over a few seconds) is in flight; then SIGTERM. The slow request completes with the
right answer, readiness says 503 on a connection still open, every request sent before the signal
succeeded, and the process exits 0 within the drain bound. A request slower than --drain-timeout
is cancelled at the deadline and the process still exits 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np
import orjson
import pytest

from runtime.repository.publish import publish
from runtime.serve.grpc_proto import SERVICE, messages
from tests.conftest import free_port
from tests.runtime.serve.conftest import MODEL, TOKEN, Server, reference_output, start_server
from tests.support import NUM_FEATURES

MAX_REQUESTS = 3000
MAX_SECONDS = 60.0
DRAIN_TIMEOUT = 20.0
X = np.random.default_rng(9).standard_normal((4, NUM_FEATURES)).astype(np.float32)
BODY = orjson.dumps(
    {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]}
)


@dataclass
class Outcome:
    sent: float
    result: str  # "200", another status, or the exception's type


@dataclass
class Load:
    """Infer requests back to back on one kept-alive connection until told to stop (bounded)."""

    url: str
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        client = httpx.Client(base_url=self.url, timeout=30)
        try:
            while not self.stop.is_set() and len(self.outcomes) < MAX_REQUESTS and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    status = client.post(f"/v2/models/{MODEL}/infer", content=BODY, headers=headers).status_code
                    self.outcomes.append(Outcome(sent, str(status)))
                except httpx.ConnectError as e:  # refused: the port no longer accepts
                    self.outcomes.append(Outcome(sent, type(e).__name__))
                    time.sleep(0.05)
                except httpx.TransportError as e:
                    self.outcomes.append(Outcome(sent, type(e).__name__))
        finally:
            client.close()


@dataclass
class GrpcLoad(Load):
    """ModelInfer calls back to back on one channel (grpc's own client), bounded the same way."""

    def run(self) -> None:
        m = messages()
        request = m.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
        request.raw_input_contents.append(X.tobytes())
        deadline = time.monotonic() + MAX_SECONDS
        metadata = [("authorization", f"Bearer {TOKEN}")]
        with grpc.insecure_channel(self.url) as channel:
            call = channel.unary_unary(
                f"/{SERVICE}/ModelInfer",
                request_serializer=m.ModelInferRequest.SerializeToString,
                response_deserializer=m.ModelInferResponse.FromString,
            )
            while not self.stop.is_set() and len(self.outcomes) < MAX_REQUESTS and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    call(request, metadata=metadata, timeout=30)
                    self.outcomes.append(Outcome(sent, "200"))
                except grpc.RpcError as e:
                    self.outcomes.append(Outcome(sent, str(e.code())))
                    time.sleep(0.05)


def _slow_body(chunks: int, pause: float, started: threading.Event):
    """The infer body in `chunks` pieces, `pause` seconds apart."""
    size = -(-len(BODY) // chunks)
    for i in range(chunks):
        yield BODY[i * size : (i + 1) * size]
        started.set()
        time.sleep(pause)


def _slow_request(server: Server, chunks: int, pause: float, started: threading.Event, result: dict) -> None:
    headers = {**server.auth, "Content-Type": "application/json", "Content-Length": str(len(BODY))}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            response = client.post(
                f"/v2/models/{MODEL}/infer", content=_slow_body(chunks, pause, started), headers=headers
            )
        result["status"], result["body"] = response.status_code, response.content
    except httpx.TransportError as e:
        result["status"] = type(e).__name__


@pytest.fixture
def draining_server(artifacts, tmp_path):
    def start(*extra: str) -> Server:
        repo = tmp_path / "repo"
        publish(artifacts[1], str(repo), model_name=MODEL)
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
        grpc_port = free_port()
        args = ["--token-file", str(token_file), "--grpc-port", str(grpc_port), "--body-timeout", "30", *extra]
        srv = start_server(str(repo), tmp_path / "server.log", args, env)
        srv.grpc_port = grpc_port
        srv.wait_for(srv.is_ready, "readiness")
        started.append(srv)
        return srv

    started: list[Server] = []
    yield start
    for srv in started:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


def _grpc_ready(target: str) -> bool:
    m = messages()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/ServerReady",
            request_serializer=m.ServerReadyRequest.SerializeToString,
            response_deserializer=m.ServerReadyResponse.FromString,
        )
        return call(m.ServerReadyRequest(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10).ready


def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0(draining_server, artifacts):
    server = draining_server("--drain-timeout", str(DRAIN_TIMEOUT))
    assert _grpc_ready(server.grpc_target)
    loads = [Load(server.url), Load(server.url), GrpcLoad(server.grpc_target)]
    threads = [threading.Thread(target=load.run) for load in loads]
    for thread in threads:
        thread.start()
    kept = httpx.Client(base_url=server.url, timeout=10, headers=server.auth)  # open before the signal
    assert kept.get("/v2/health/ready").status_code == 200
    slow_started, slow = threading.Event(), {}
    slow_thread = threading.Thread(target=_slow_request, args=(server, 10, 0.3, slow_started, slow))
    try:
        slow_thread.start()
        assert slow_started.wait(30)
        time.sleep(0.5)  # the slow request is being read; the loads keep going
        assert all(load.outcomes for load in loads), "the load did not start"
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(lambda: "draining:" in server.log_path.read_text(), "the drain to start", timeout=10)
        ready = kept.get("/v2/health/ready")  # the connection is still open: not ready now
        assert ready.status_code == 503 and "draining" in ready.text
        assert ready.headers.get("connection") == "close"
        slow_thread.join(30)
        code = server.proc.wait(timeout=DRAIN_TIMEOUT + 15)
    finally:
        for load in loads:
            load.stop.set()
        for thread in threads:
            thread.join(MAX_SECONDS)
        kept.close()
    assert slow.get("status") == 200, slow
    expected = reference_output(artifacts[1], X)
    got = np.asarray(orjson.loads(slow["body"])["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert code == 0, server.log_path.read_text()[-3000:]
    before = [o for load in loads for o in load.outcomes if o.sent < signalled]
    failed = [o for o in before if o.result != "200"]
    assert before and failed == [], failed[:5]
    after = [o for load in loads for o in load.outcomes if o.sent >= signalled]
    assert after and any(o.result != "200" for o in after), "nothing was refused after the signal"
    log = server.log_path.read_text()
    assert "drained in" in log and "(0 HTTP requests cancelled" in log and "stopped after" in log


def test_a_request_beyond_the_drain_timeout_is_cancelled_and_the_server_still_exits_0(draining_server):
    server = draining_server("--drain-timeout", "1")
    slow_started, slow = threading.Event(), {}
    slow_thread = threading.Thread(target=_slow_request, args=(server, 20, 0.5, slow_started, slow))
    slow_thread.start()
    try:
        assert slow_started.wait(30)
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=20)
    finally:
        slow_thread.join(30)
    assert code == 0, server.log_path.read_text()[-3000:]
    assert slow.get("status") != 200, slow
    log = server.log_path.read_text()
    assert "cancelling 1 HTTP requests still in flight" in log and "(1 HTTP requests cancelled" in log


def test_a_terminated_process_is_gone(draining_server):
    """SIGTERM on an idle server: it exits 0 and the ports refuse connections afterwards."""
    server = draining_server()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=DRAIN_TIMEOUT + 15) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live", timeout=5)
    with pytest.raises(grpc.RpcError):
        _grpc_ready(server.grpc_target)
