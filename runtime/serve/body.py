"""Request bodies for `runtime.serve`: size cap, deadline, a global in-flight budget, decompression,
and decoding of large bodies in a worker process.

Only authenticated requests get here. A body is bounded three ways: by `max_body_bytes` per request
(413, also after gzip/deflate), by `body_timeout` for the whole body (408; checked by the same
`Sweep` as the HTTP front's deadlines, not by a timer per request), and by a budget of body
bytes held in memory by all requests together (`max_inflight_body_bytes`): a request whose body
does not fit in what is left gets 503 with `Retry-After` instead of growing memory. A request holds
its share (the declared Content-Length at once, or each chunk as it arrives, plus the decompressed
size) until its response is sent.

Decoding a large JSON body (orjson, then numpy from Python lists) holds the GIL for as long as it
runs, so a thread would still stall the event loop; bodies whose JSON part exceeds
`offload_bytes` are decoded in one worker process instead (`DecodePool`), which keeps liveness and
small requests fast while one client sends 16 MiB of JSON.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from runtime.serve.protocol import InferRequest, Limits, RequestError, TensorSpec, decode_infer_request


class Refused(RequestError):
    """A request refused by a limit: counted under `reason` in /metrics (`stratus_rejections`)."""

    def __init__(self, status: int, message: str, reason: str, *, retry_after: bool = False, close: bool = False):
        super().__init__(status, message)
        self.reason = reason
        self.retry_after = retry_after
        self.close = close


class BodyBudget:
    """Bytes of request bodies held by all requests in flight (one event loop: no lock)."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0

    def take(self, num_bytes: int) -> bool:
        if self.used + num_bytes > self.total:
            return False
        self.used += num_bytes
        return True

    def give(self, num_bytes: int) -> None:
        self.used -= num_bytes


SWEEP_SECONDS = 0.25
"""How often deadlines are checked: timeouts fire up to this much late."""


class Timed(Protocol):
    deadline: float | None

    def expired(self) -> None: ...


class Sweep:
    """Deadlines of many objects (connections, body reads) checked by one timer every SWEEP_SECONDS.

    An asyncio timer per request (`asyncio.timeout`: created, rescheduled, cancelled) costs ~5-9 us,
    more than the request's routing and auth together; a set insertion costs ~0.1 us, and a sweep of
    a thousand deadlines four times a second ~1 ms/s. `expired()` is called once the object's
    `deadline` (the loop's clock) has passed; objects leave with `discard`. One event loop: no lock.
    """

    def __init__(self) -> None:
        self.timed: set[Timed] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, item: Timed, loop: asyncio.AbstractEventLoop) -> None:
        self.timed.add(item)
        if self._loop is None:
            self._loop = loop
            loop.call_later(SWEEP_SECONDS, self._sweep)

    def discard(self, item: Timed) -> None:
        self.timed.discard(item)

    def _sweep(self) -> None:
        loop = self._loop
        now = loop.time()
        for item in [i for i in self.timed if i.deadline is not None and i.deadline <= now]:
            item.expired()
        if self.timed:
            loop.call_later(SWEEP_SECONDS, self._sweep)
        else:
            self._loop = None


@dataclass(eq=False)
class BodyReader:
    """Reads one request's body within the limits; `held` is what it took from the budget.

    `sweep` checks the body deadline: when it passes, the reading task is cancelled and the read
    raises Refused(408) instead (None: a sweep of this reader's own)."""

    budget: BodyBudget
    cap: int
    timeout: float
    sweep: Sweep | None = None
    held: int = field(default=0)
    deadline: float | None = field(default=None)
    _task: asyncio.Task | None = field(default=None)
    _timed_out: bool = field(default=False)

    def take(self, num_bytes: int) -> None:
        if not self.budget.take(num_bytes):
            raise Refused(
                503,
                f"the server holds its budget of {self.budget.total} bytes of request bodies; retry shortly",
                "body_budget",
                retry_after=True,
                close=True,
            )
        self.held += num_bytes

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0

    async def read(self, headers: dict[bytes, bytes], receive) -> bytes:
        """The whole (decompressed) body. Raises Refused (408/413/503), RequestError (400/415)."""
        cap = self.cap
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > cap:
                raise Refused(
                    413, f"request body of {int(declared)} bytes exceeds the cap of {cap}", "body_too_large", close=True
                )
            self.take(int(declared))
            declared_bytes = int(declared)
        else:
            declared_bytes = None
        body = await self._receive_all(receive, declared_bytes is None)
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding in (b"", b"identity"):
            return body
        out = _decompress(body, encoding, cap)
        self.take(len(out))
        return out

    async def _receive_all(self, receive, take_chunks: bool) -> bytes:
        # One deadline for the whole body, first byte included (slow-body clients get 408).
        loop = asyncio.get_running_loop()
        sweep = self.sweep if self.sweep is not None else Sweep()
        self._task = asyncio.current_task(loop)
        self.deadline = loop.time() + self.timeout
        sweep.watch(self, loop)
        chunks: list[bytes] = []
        total, cap = 0, self.cap
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > cap:
                    raise Refused(413, f"request body exceeds the cap of {cap} bytes", "body_too_large", close=True)
                if take_chunks:
                    self.take(len(chunk))
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            self._task.uncancel()
            raise Refused(
                408, f"request body not received within {self.timeout:g} s", "body_timeout", close=True
            ) from None
        finally:
            self.deadline = None
            sweep.discard(self)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def expired(self) -> None:
        """The body deadline passed (called by the sweep): cancel the read, which answers 408."""
        self.deadline = None
        self._timed_out = True
        self._task.cancel()


class Disconnected(Exception):
    """The client went away before its body arrived."""


def _decompress(body: bytes, encoding: bytes, cap: int) -> bytes:
    wbits = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}.get(encoding)
    if wbits is None:
        raise RequestError(415, f"Content-Encoding {encoding[:32].decode(errors='replace')!r}: use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, cap + 1)
    except zlib.error as e:
        raise RequestError(400, f"request body is not valid {encoding.decode()}: {e}") from None
    if len(out) > cap:
        raise Refused(413, f"decompressed request body exceeds the cap of {cap} bytes", "body_too_large", close=True)
    if not inflater.eof or inflater.unused_data:
        raise RequestError(400, f"request body is a truncated or concatenated {encoding.decode()} stream")
    return out


class DecodePool:
    """Decodes infer requests whose JSON part is larger than `offload_bytes` in a worker process.

    One worker: large JSON requests queue behind each other instead of taking every core.
    """

    def __init__(self, offload_bytes: int | None):
        self.offload_bytes = offload_bytes
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        if self.offload_bytes is None:
            return  # decode everything on the event loop
        # spawn, not fork: the server process has threads (ONNX Runtime, the loop's executor).
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self._pool.submit(int)  # start the worker now rather than on the first large request

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def decode(
        self,
        body: bytes,
        header_length: int | None,
        inputs: dict[str, TensorSpec],
        outputs: dict[str, TensorSpec],
        limits: Limits,
    ) -> InferRequest:
        json_bytes = len(body) if header_length is None else header_length
        if self._pool is None or json_bytes < (self.offload_bytes or 0):
            return decode_infer_request(body, header_length, inputs, outputs, limits)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, decode_infer_request, body, header_length, inputs, outputs, limits
        )
