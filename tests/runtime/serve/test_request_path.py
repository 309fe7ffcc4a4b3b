"""The per-request machinery in process: body deadlines by sweep, request metrics, access log lines.

These replaced per-request timers, prometheus_client's locked counters and a dict per log line
(docs/benchmarks.md, "Serving"); the end-to-end behaviour is covered by the server tests, these
pin what the cheaper versions must keep identical.
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from runtime.serve.body import SWEEP_SECONDS, BodyBudget, BodyReader, Refused, Sweep
from runtime.serve.metrics import LATENCY_BUCKETS, AccessLog, Metrics


def _reader(sweep: Sweep, timeout: float = 0.3) -> BodyReader:
    return BodyReader(BodyBudget(1 << 20), 1 << 16, timeout, sweep)


async def _never():
    await asyncio.Event().wait()


def test_slow_body_gets_408_by_the_sweep_and_the_task_is_not_left_cancelled():
    async def main():
        sweep = Sweep()
        reader = _reader(sweep)
        start = time.monotonic()
        with pytest.raises(Refused) as caught:
            await asyncio.wait_for(reader.read({b"content-length": b"10"}, _never), 5)
        elapsed = time.monotonic() - start
        assert caught.value.status == 408 and caught.value.reason == "body_timeout"
        assert 0.3 <= elapsed < 0.3 + 2 * SWEEP_SECONDS
        assert asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0.01)  # would raise CancelledError if a cancel were still pending
        assert not sweep.timed

    asyncio.run(main())


def test_other_cancellations_pass_through_and_fast_bodies_leave_nothing_armed():
    async def main():
        sweep = Sweep()
        task = asyncio.create_task(_reader(sweep, timeout=30).read({}, _never))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not sweep.timed

        async def whole():
            return {"type": "http.request", "body": b"abc", "more_body": False}

        reader = _reader(sweep)
        assert await reader.read({b"content-length": b"3"}, whole) == b"abc"
        assert not sweep.timed and reader.deadline is None
        await asyncio.sleep(0.5)  # past the timeout: nothing fires for a finished read

    asyncio.run(main())


def test_request_metrics_expose_what_prometheus_client_classes_would():
    observations = [("infer", 200, 0.0004), ("infer", 200, 0.0005), ("infer", 404, 0.01), ("live", 200, 3.0)]
    observations += [("grpc:ModelInfer", 503, 0.02), ("infer", 200, 0.0021)]
    metrics = Metrics()
    reference = CollectorRegistry()
    requests = Counter(
        "stratus_requests", "HTTP requests by route and status code", ["route", "code"], registry=reference
    )
    errors = Counter(
        "stratus_request_errors", "HTTP responses with status >= 400 by code", ["code"], registry=reference
    )
    latency = Histogram(
        "stratus_request_duration_seconds",
        "Request latency from first byte handled to response sent",
        ["route"],
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    for route, code, seconds in observations:
        metrics.observe(route, code, seconds)
        requests.labels(route, str(code)).inc()
        latency.labels(route).observe(seconds)
        if code >= 400:
            errors.labels(str(code)).inc()

    def series(registry) -> set[str]:
        lines = generate_latest(registry).decode().splitlines()
        return {line for line in lines if line.startswith("stratus_request") and "_created" not in line}

    assert series(metrics.registry) == series(reference)


def test_access_log_lines_are_json_with_every_field_and_escape_the_path():
    async def main():
        stream = io.StringIO()
        log = AccessLog(stream)
        hostile = '/v2/"x\\\n\u2028</script>' + "a" * 300
        log.request("10.0.0.1", "POST", hostile, "unmatched", 404, 0.0012346, 17, "")
        log.request(
            "ipv4:127.0.0.1:5",
            "GRPC",
            "/inference.GRPCInferenceService/ModelInfer",
            "grpc:ModelInfer",
            200,
            2.5,
            0,
            "3",
        )
        log.flush()
        return [json.loads(line) for line in stream.getvalue().rstrip("\n").split("\n")]  # U+2028 is no newline

    first, second = asyncio.run(main())
    assert set(first) == {
        "ts",
        "level",
        "logger",
        "client",
        "method",
        "path",
        "route",
        "status",
        "ms",
        "bytes_out",
        "model_version",
    }
    assert first["path"] == ('/v2/"x\\\n\u2028</script>' + "a" * 300)[:256]
    assert (first["status"], first["ms"], first["bytes_out"], first["model_version"]) == (404, 1.235, 17, "")
    assert first["logger"] == "stratus.access" and first["level"] == "info" and abs(first["ts"] - time.time()) < 60
    assert (second["method"], second["route"], second["ms"], second["model_version"]) == (
        "GRPC",
        "grpc:ModelInfer",
        2500.0,
        "3",
    )
