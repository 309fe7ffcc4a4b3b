"""`free_port()`: a TCP port nobody listens on, for a rendezvous or a local server.

One helper for the runtime (`stratus train` picks DeepSpeed's master port with it), the tests and
the benchmarks (both import it from here; the runtime imports nothing of theirs).
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now; the OS picks it. Another process may take it before it is bound
    again, so use it at once (the same race as every "bind to 0, close, reuse" helper)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
