"""The HTTP front of `runtime.serve`: the limits that hold before a request reaches the app.

A thin subclass of uvicorn's httptools protocol (one instance per TCP connection). Everything
here happens before authentication, so it is what an anonymous client can reach:

- connection caps checked at accept: at most `max_connections_per_client` per client address and
  `max_connections` in all; at the global cap the connection idle longest (no request in
  progress: it has not finished a request head or waits between requests) is closed to make room,
  so idle or slow clients can never lock out a new one; only when every connection is inside a
  request does a new one get 503;
- a request head (request line + headers) must arrive within `header_timeout` seconds, counted
  from accept for the first request and from its first byte for the next ones on a keep-alive
  connection; a keep-alive connection may wait `keepalive_timeout` seconds between requests.
  Neither deadline is extended by data that trickles in; one sweep every SWEEP_SECONDS checks
  them all (cheaper than a timer created and cancelled on every request);
- head size caps, checked on the raw bytes before they reach the parser (httptools accumulates a
  header value by repeated concatenation, quadratic in its length): 414 when the request line
  exceeds `max_request_line_bytes`, 431 when the head exceeds `max_header_bytes`.

Each rejection calls `on_reject(reason, client address)` (counted in /metrics and logged by the
caller). Responses to rejected requests carry `Connection: close`; the connection then drains
what the client still sends for `linger_seconds` before closing, so the client reads the status
instead of a reset. Body limits (size, timeout, the global in-flight budget) are the app's, since
only authenticated requests get as far as their body (`runtime.serve.app`).

Drain (SIGTERM, `runtime.serve.drain`): uvicorn calls `shutdown()` on every connection. A request
in progress finishes and its response closes the connection; an idle connection stays open for
DRAIN_IDLE_SECONDS in case a request is already on its way (one that starts is served with
`Connection: close`), then is closed without counting a rejection.

Bytes of the next request head that arrive in the same read as the end of the previous message
are parsed without being counted (at most one read, 256 KiB with uvloop); every later read is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from runtime.serve.body import SWEEP_SECONDS, Sweep

__all__ = ["DRAIN_IDLE_SECONDS", "SWEEP_SECONDS", "Front", "FrontLimits", "FrontProtocol"]

DRAIN_IDLE_SECONDS = 1.0
"""On drain, how long an idle keep-alive connection stays open for a request already sent on it."""

_PHRASES = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(frozen=True, kw_only=True)
class FrontLimits:
    """Per-connection limits of the HTTP front (the flags of `stratus serve` of the same names)."""

    header_timeout: float = 10.0
    """Seconds for a request head to arrive (from accept, or from its first byte on keep-alive)."""

    keepalive_timeout: float = 15.0
    """Seconds a connection may wait idle between requests."""

    max_request_line_bytes: int = 8 << 10
    """Longest request line (method, URL, version); longer answers 414."""

    max_header_bytes: int = 32 << 10
    """Largest request head (request line + headers); larger answers 431."""

    max_connections: int = 1024
    """Open connections in all; at the cap the longest-idle connection is closed for a new one."""

    max_connections_per_client: int = 256
    """Open connections from one client address; more answer 503."""

    linger_seconds: float = 1.0
    """After a rejection, seconds to drain the client's remaining bytes before closing."""


class Front:
    """State shared by all connections: the limits, the connection counts, the rejection hook.

    Args:
        limits: the limits above.
        on_reject: callback(reason, client address), called once per rejection.
        sweep: checks the connections' deadlines (shared with the app's body deadlines; None: a
            sweep of the front's own).
    """

    def __init__(self, limits: FrontLimits, on_reject: Callable[[str, str], None], sweep: Sweep | None = None):
        self.limits = limits
        self.on_reject = on_reject
        self.open_connections = 0
        self.per_client: dict[str, int] = {}
        self.idle: dict[FrontProtocol, None] = {}  # insertion order: longest idle first
        self.sweep = sweep or Sweep()

    def watch(self, conn: FrontProtocol) -> None:
        """Check `conn`'s deadline from now on. One sweep every SWEEP_SECONDS checks them all: a
        per-request timer (created, cancelled, re-created on every request) costs more than the
        request's own routing, while a sweep of 1,024 deadlines four times a second costs ~1 ms/s."""
        self.sweep.watch(conn, conn.loop)

    def protocol_class(self) -> type[FrontProtocol]:
        """The protocol class to give uvicorn (`uvicorn.Config(http=...)`), bound to this front."""
        return type("BoundFrontProtocol", (FrontProtocol,), {"front": self})

    def admit(self, conn: FrontProtocol) -> tuple[str, str] | None:
        """Count a new connection in, or return (reason, message) when it must be refused."""
        addr = conn.address
        if self.per_client.get(addr, 0) >= self.limits.max_connections_per_client:
            cap = self.limits.max_connections_per_client
            return "client_connections", f"more than {cap} open connections from your address; close some"
        if self.open_connections >= self.limits.max_connections:
            victim = next(iter(self.idle), None)
            if victim is None:
                return "connections", "the server is at its connection cap; retry shortly"
            victim.evict()
        self.per_client[addr] = self.per_client.get(addr, 0) + 1
        self.open_connections += 1
        return None

    def release(self, conn: FrontProtocol) -> None:
        self.idle.pop(conn, None)
        self.open_connections -= 1
        left = self.per_client[conn.address] - 1
        if left:
            self.per_client[conn.address] = left
        else:
            del self.per_client[conn.address]


class FrontProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the front's limits (see the module docstring)."""

    front: Front  # set on the class by Front.protocol_class()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self.address = self.client[0] if self.client else ""
        self._counted = self._rejected = self._draining = False
        self.deadline: float | None = None
        self._start_head(after_response=False)
        refused = self.front.admit(self)
        if refused is not None:
            self._reject(503, *refused, linger=False)
            return
        self._counted = True
        self._set_idle(True)
        self._arm(self.front.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.front.sweep.discard(self)
        if self._counted:
            self._counted = False
            self.front.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # draining before the close
        if self._in_head:
            refused = self._scan_head(data)
            if refused is not None:
                self._reject(*refused)
                return
        super().data_received(data)

    def _start_head(self, *, after_response: bool) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._line_done = False
        self._tail = b""
        self._after_response = after_response

    def _scan_head(self, data: bytes) -> tuple[int, str, str] | None:
        limits = self.front.limits
        before = self._head_bytes
        if before == 0 and self._after_response and data:
            self._arm(limits.header_timeout)  # the next request began: its head has header_timeout
        self._head_bytes += len(data)
        if not self._line_done:
            end = data.find(b"\n")
            line_bytes = self._head_bytes if end < 0 else before + end
            if line_bytes > limits.max_request_line_bytes:
                cap = limits.max_request_line_bytes
                return 414, "request_line_too_long", f"request line longer than {cap} bytes; shorten the URL"
            self._line_done = end >= 0
        if self._head_bytes > limits.max_header_bytes:
            allowed = data[: max(limits.max_header_bytes - before, 0) + 4]
            if b"\r\n\r\n" not in self._tail + allowed:
                cap = limits.max_header_bytes
                return 431, "headers_too_large", f"request headers larger than {cap} bytes in all"
        self._tail = data[-3:]
        return None

    # parser callbacks (called by super().data_received)
    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        self._set_idle(False)
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # the response says `Connection: close`

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._start_head(after_response=True)

    def on_response_complete(self) -> None:
        # uvicorn's own, less its keep-alive timer (the front's deadline replaces it)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._counted and not self._rejected:
            self._set_idle(True)
            self._arm(self.front.limits.keepalive_timeout)

    def send_400_response(self, msg: str) -> None:
        self.front.on_reject("bad_request", self.address)
        self._rejected = True
        super().send_400_response(msg)

    def shutdown(self) -> None:
        """The server drains (called by uvicorn on every open connection; module docstring)."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif self._head_bytes == 0 and not self._rejected:
            self._arm(DRAIN_IDLE_SECONDS)
        # a head partly received keeps its header deadline; the request is then served with close

    # limits
    def _set_idle(self, idle: bool) -> None:
        self.front.idle.pop(self, None)
        if idle and self._counted:
            self.front.idle[self] = None

    def _arm(self, seconds: float) -> None:
        if self not in self.front.sweep.timed:
            self.front.watch(self)
        self.deadline = self.loop.time() + seconds

    def _cancel_timer(self) -> None:
        self.deadline = None

    def expired(self) -> None:
        """The deadline passed (called by the front's sweep)."""
        self.deadline = None
        if self.transport.is_closing() or self._rejected:
            return
        if self._head_bytes == 0:
            if not self._after_response and not self._draining:  # keep-alive or drain: no rejection
                self.front.on_reject("idle_timeout", self.address)
            self._rejected = True
            self.transport.close()
            return
        seconds = self.front.limits.header_timeout
        self._reject(408, "header_timeout", f"request head not received within {seconds:g} s")

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (the global cap is reached)."""
        self.front.on_reject("evicted_idle", self.address)
        self._rejected = True
        self._cancel_timer()
        if self._counted:
            self._counted = False
            self.front.release(self)
        self.transport.close()

    def _reject(self, status: int, reason: str, message: str, *, linger: bool = True) -> None:
        self.front.on_reject(reason, self.address)
        self._rejected = True
        self._cancel_timer()
        self._set_idle(False)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is still being produced: no second one on the wire
            return
        body = orjson.dumps({"error": message})
        head = [f"HTTP/1.1 {status} {_PHRASES[status]}", "content-type: application/json"]
        head += [f"content-length: {len(body)}", "connection: close"]
        if status == 503:
            head.append("retry-after: 1")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        if not linger:
            self.transport.close()
            return
        # Closing with unread input makes the kernel send a reset, which can discard the response
        # before the client reads it: stop writing, drain for a moment, then close.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(self.front.limits.linger_seconds, self.transport.close)
