"""Observability of `runtime.serve`: Prometheus metrics and the structured access log.

Metrics live in a private registry served at `/metrics` behind the bearer token. Label values
are bounded: routes come from the route table (unknown paths are "unmatched"), codes from the
responses the app sends.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

log = logging.getLogger("stratus.serve")

# The *_created series double the exposition size and nobody alerts on them.
disable_created_metrics()


class Metrics:
    """Prometheus metrics in a private registry (served at /metrics behind the token)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "stratus_requests", "HTTP requests by route and status code", ["route", "code"], registry=r
        )
        self.errors = Counter(
            "stratus_request_errors", "HTTP responses with status >= 400 by code", ["code"], registry=r
        )
        self.latency = Histogram(
            "stratus_request_duration_seconds",
            "Request latency from first byte handled to response sent",
            ["route"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
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
        self._children: dict[tuple[str, int], tuple] = {}
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
        children = self._children.get((route, code))
        if children is None:
            err = self.errors.labels(str(code)) if code >= 400 else None
            children = (self.requests.labels(route, str(code)), self.latency.labels(route), err)
            self._children[(route, code)] = children
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

    def on_model_event(self, event: str, version: int | None = None, reason: str = "") -> None:
        if event == "loaded":
            self.reloads.inc()
            self.model_version.set(version or 0)
            self.model_ready.set(1)
        elif event == "reload_failed":
            self.reload_failures.labels(reason).inc()


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

    def write(self, entry: dict) -> None:
        line = orjson.dumps(entry).decode()
        self._lines.append(line)
        self._size += len(line)
        if self._size > 65536:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.flush_interval, self.flush)

    def request(
        self, client: str, method: str, path: str, route: str, status: int, seconds: float, bytes_out: int, version: str
    ) -> None:
        """One line for one request (HTTP or gRPC: method "GRPC", path the full method name)."""
        self.write(
            {
                "ts": round(time.time(), 3),
                "level": "info",
                "logger": "stratus.access",
                "client": client,
                "method": method,
                "path": path[:256],
                "route": route,
                "status": status,
                "ms": round(seconds * 1e3, 3),
                "bytes_out": bytes_out,
                "model_version": version,
            }
        )

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            self.stream.write("\n".join(self._lines) + "\n")
            self.stream.flush()
            self._lines.clear()
            self._size = 0
