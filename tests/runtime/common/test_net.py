"""free_port: below the ephemeral range, so no outgoing connection takes it before the bind."""

from __future__ import annotations

import socket

from runtime.common.net import LOWEST, ephemeral_range, free_port


def test_free_ports_are_bindable_and_below_the_ephemeral_range():
    low, high = ephemeral_range()
    assert LOWEST < low <= high
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # picked at random, not one fixed port
    for port in ports:
        assert LOWEST <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_returned():
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        assert all(free_port() != taken for _ in range(200))
