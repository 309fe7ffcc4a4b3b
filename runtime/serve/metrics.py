"""Observability of `runtime.serve`: Prometheus metrics and the structured access log.

Metrics live in a private registry served at `/metrics` behind the bearer token. Label values
are bounded: routes come from the route table (unknown paths are "unmatched"), codes from the
responses the app sends.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import sys
import time

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

log = logging.getLogger("stratus.serve")

# The *_created series double the exposition size and nobody alerts on them.
disable_created_metrics()


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RequestStats:
    """The per-request series (requests by route and code, errors by code, latency by route) as
    plain counters, exposed through a registry collector.

    prometheus_client's Counter.inc and Histogram.observe take a lock per value (three per request
    here, ~2 us in all); these are updated only on the event loop, so plain integers do, ~0.5 us.
    The exposition is the same as those classes give: `stratus_requests_total{code,route}`,
    `stratus_request_errors_total{code}`, `stratus_request_duration_seconds_{bucket,count,sum}`.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.errors: dict[str, int] = {}
        self.latency: dict[str, list] = {}  # route -> [bucket counts..., +Inf count, sum]
        self._keys: dict[tuple[str, int], tuple] = {}

    def observe(self, route: str, code: int, seconds: float) -> None:
        keys = self._keys.get((route, code))
        if keys is None:
            keys = self._keys[(route, code)] = (route, str(code))
            self.requests.setdefault(keys, 0)
            self.latency.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 2))
            if code >= 400:
                self.errors.setdefault(keys[1], 0)
        self.requests[keys] += 1
        if code >= 400:
            self.errors[keys[1]] += 1
        hist = self.latency[route]
        hist[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        hist[-1] += seconds

    def describe(self):
        return []  # no series until the first request, like labelled Counters

    def collect(self):
        requests = CounterMetricFamily(
            "stratus_requests", "HTTP requests by route and status code", labels=["route", "code"]
        )
        for (route, code), count in self.requests.items():
            requests.add_metric([route, code], count)
        errors = CounterMetricFamily(
            "stratus_request_errors", "HTTP responses with status >= 400 by code", labels=["code"]
        )
        for code, count in self.errors.items():
            errors.add_metric([code], count)
        latency = HistogramMetricFamily(
            "stratus_request_duration_seconds",
            "Request latency from first byte handled to response sent",
            labels=["route"],
        )
        for route, hist in self.latency.items():
            cumulative, running = [], 0
            for bound, count in zip((*map(_le, LATENCY_BUCKETS), "+Inf"), hist[:-1], strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([route], cumulative, sum_value=hist[-1])
        return [requests, errors, latency]


def _le(bound: float) -> str:
    return repr(float(bound))


class Metrics:
    """Prometheus metrics in a private registry (served at /metrics behind the token)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stats = RequestStats()
        r.register(self.stats)
        self.model_version = Gauge("stratus_model_version", "Model version being served (0: none)", registry=r)
        self.model_ready = Gauge("stratus_model_ready", "1 when a verified, warmed model is serving", registry=r)
        self.reloads = Counter("stratus_model_reloads", "Model versions loaded and swapped in", registry=r)
        self.reload_failures = Counter(
            "stratus_model_reload_failures", "Versions that failed to load, by reason", ["reason"], registry=r
        )
        self.rejections = Counter(
            "stratus_rejections",
            "Connections and requests refused by a limit, by reason (before or after authentication)",
            ["reason"],
            registry=r,
        )
        self._reject_log: dict[str, tuple[float, int]] = {}

    def reject(self, reason: str, client: str = "") -> None:
        """Count a refused connection or request and log it, at most one line per reason per second.

        A flood of rejections would otherwise turn into a flood of log lines; the line that is
        written says how many were left out since the previous one."""
        self.rejections.labels(reason).inc()
        now = time.monotonic()
        last, suppressed = self._reject_log.get(reason, (0.0, 0))
        if now - last < 1.0:
            self._reject_log[reason] = (last, suppressed + 1)
            return
        self._reject_log[reason] = (now, 0)
        more = f" ({suppressed} more since the last line)" if suppressed else ""
        log.warning("refused (%s) from %s%s", reason, client or "unknown", more)

    def observe(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request (HTTP or gRPC) with its latency; event loop only."""
        self.stats.observe(route, code, seconds)

    def on_model_event(self, event: str, version: int | None = None, reason: str = "") -> None:
        if event == "loaded":
            self.reloads.inc()
            self.model_version.set(version or 0)
            self.model_ready.set(1)
        elif event == "reload_failed":
            self.reload_failures.labels(reason).inc()


_ACCESS_LINE = (
    '{"ts":%.3f,"level":"info","logger":"stratus.access","client":%s,"method":%s,"path":%s,"route":%s,'
    '"status":%d,"ms":%.3f,"bytes_out":%d,"model_version":%s}'
)


@functools.lru_cache(maxsize=4096)
def _json_str(text: str) -> str:
    return orjson.dumps(text).decode()


class AccessLog:
    """Structured access log: one JSON object per request, written in batches.

    Lines are buffered and flushed every `flush_interval` seconds (or at 64 KiB), like nginx's
    `access_log ... buffer=`: a write per request would cost more than the request itself.
    """

    def __init__(self, stream=None, flush_interval: float = 0.2):
        self.stream = stream or sys.stderr
        self.flush_interval = flush_interval
        self._lines: list[str] = []
        self._size = 0
        self._scheduled = False

    def request(
        self, client: str, method: str, path: str, route: str, status: int, seconds: float, bytes_out: int, version: str
    ) -> None:
        """One line for one request (HTTP or gRPC: method "GRPC", path the full method name).

        Formatted from a template rather than a dict through orjson (~1 us instead of ~3-6 us): the
        strings are JSON-escaped by orjson once per distinct value (`_json_str`)."""
        line = _ACCESS_LINE % (
            time.time(),
            _json_str(client),
            _json_str(method),
            _json_str(path[:256]),
            _json_str(route),
            status,
            seconds * 1e3,
            bytes_out,
            _json_str(version),
        )
        self._lines.append(line)
        self._size += len(line)
        if self._size > 65536:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            self.stream.write("\n".join(self._lines) + "\n")
            self.stream.flush()
            self._lines.clear()
            self._size = 0
