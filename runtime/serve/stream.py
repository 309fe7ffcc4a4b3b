"""Streamed responses of the ASGI app: an async iterator of byte chunks sent as it produces them,
and the client's disconnect noticed while a long answer is produced.

Used for server-sent events (`runtime.serve.generate`); a handler returns such an iterator as its
body instead of bytes. A generation runs for seconds, and the server would never learn that its
client went away (sending to a closed connection is silently dropped by the ASGI server), so both
kinds of generating answer watch the ASGI `receive` channel for `http.disconnect` once the body
was read: a stream stops at its next chunk (`send_stream`), a whole answer is abandoned
(`until_disconnected`), and either way the generation is stopped at its next token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from runtime.serve.body import Disconnected

log = logging.getLogger("stratus.serve")

T = TypeVar("T")
_RECEIVE_PAUSE = 0.05
"""Seconds between `receive` calls that did not say disconnect. A server's `receive` after the body
blocks until the client goes away; a test's may answer at once, and must not make this spin."""


async def disconnected(receive) -> None:
    """Return once the client went away (`http.disconnect`). Call it only after the body was read."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(_RECEIVE_PAUSE)


async def until_disconnected(receive, answer: Awaitable[T], on_disconnect: Callable[[], Awaitable]) -> T:
    """Await `answer` unless the client goes away first: then `answer` is cancelled,
    `on_disconnect()` awaited (stop the work behind it) and Disconnected raised."""
    result = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(disconnected(receive))
    try:
        await asyncio.wait((result, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            result.cancel()
    if not result.cancelled() and result.done():
        return result.result()
    await on_disconnect()
    raise Disconnected()


async def send_stream(send, status: int, headers, chunks, receive=None) -> tuple[int, bool]:
    """Send an async iterator of byte chunks as they come (no content-length: chunked encoding).

    Returns (the bytes sent, whether the stream ended normally). A client that goes away ends the
    iterator early (`aclose` stops the producer): noticed on a failed send, or at the next chunk
    once `receive` (the request's ASGI channel, body already read) says `http.disconnect`."""
    size, complete = 0, False
    gone = asyncio.ensure_future(disconnected(receive)) if receive is not None else None
    try:
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        async for chunk in chunks:
            if gone is not None and gone.done():
                break
            size += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            await send({"type": "http.response.body", "body": b""})
            complete = True
    except OSError:  # the client disconnected mid-stream
        pass
    except Exception:  # the producer failed after the status line went out: end the stream
        log.exception("stream of %d bytes ended by an internal error", size)
        complete = True
    finally:
        if gone is not None:
            gone.cancel()
        await chunks.aclose()
    return size, complete
