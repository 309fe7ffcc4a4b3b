"""`free_port()`: a TCP port nobody listens on, for a rendezvous or a local server.

One helper for the runtime (`stratus train` picks DeepSpeed's master port with it), the tests and
the benchmarks (both import it from here; the runtime imports nothing of theirs).

The port is taken from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), the
range outgoing connections take their source ports from. A port picked inside that range (what
binding to port 0 returns) can be taken by any process's next outgoing connection in the seconds
between the pick and the rendezvous binding it again, which makes rank 0 fail with "address
already in use"; below the range only an explicit bind can take it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000
"""The lowest port handed out (below: well-known and registered services)."""


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux; elsewhere IANA's 49152-65535)."""
    try:
        low, high = (int(v) for v in PORT_RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, below the ephemeral range when there is room there (else one
    the OS picks). Another process may still bind it before it is bound again: use it at once."""
    low, _ = ephemeral_range()
    if low - LOWEST >= 1000:
        rng = random.SystemRandom()
        for _ in range(64):
            port = rng.randrange(LOWEST, low)
            if _bindable(host, port):
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
