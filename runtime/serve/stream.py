"""Streamed responses of the ASGI app: an async iterator of byte chunks sent as it produces them.

Used for server-sent events (`runtime.serve.generate`); a handler returns such an iterator as its
body instead of bytes.
"""

from __future__ import annotations

import logging

log = logging.getLogger("stratus.serve")


async def send_stream(send, status: int, headers, chunks) -> int:
    """Send an async iterator of byte chunks as they come (no content-length: chunked encoding).

    Returns the bytes sent. A client that goes away ends the iterator early (`aclose` stops the
    producer)."""
    size = 0
    try:
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        async for chunk in chunks:
            size += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except OSError:  # the client disconnected mid-stream
        pass
    except Exception:  # the producer failed after the status line went out: end the stream
        log.exception("stream of %d bytes ended by an internal error", size)
    finally:
        await chunks.aclose()
    return size
