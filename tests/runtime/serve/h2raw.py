"""A raw HTTP/2 client for abuse tests of the gRPC port: frames written by hand over a socket.

A stock client cannot misbehave on purpose (it honours SETTINGS_MAX_CONCURRENT_STREAMS, always
sends its message, never resets a stream it just opened), so these tests write the frames
themselves: the connection preface, SETTINGS, HEADERS without END_STREAM (HPACK literals without
indexing or Huffman coding, which every decoder accepts) and RST_STREAM. Loopback only.
"""

from __future__ import annotations

import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 0x8
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def _literal(name: str, value: str) -> bytes:
    out = b"\x00"  # literal header field without indexing, new name
    for text in (name.encode(), value.encode()):
        assert len(text) < 127, text  # one-byte length prefix, no Huffman coding
        out += bytes([len(text)]) + text
    return out


def grpc_headers(path: str, authorization: str | None = None) -> bytes:
    """An HPACK block of a gRPC call's request headers."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    if authorization is not None:
        fields.append(("authorization", authorization))
    return b"".join(_literal(name, value) for name, value in fields)


class RawConnection:
    """One HTTP/2 connection to 127.0.0.1:port that has exchanged SETTINGS with the server."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.server_settings: dict[int, int] = {}
        self.frames_seen: list[int] = []
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        deadline = time.monotonic() + timeout
        while True:
            kind, flags, _, payload = self.read_frame(deadline)
            if kind == SETTINGS and not flags & ACK:
                for i in range(0, len(payload), 6):
                    key, value = struct.unpack(">HI", payload[i : i + 6])
                    self.server_settings[key] = value
                self.sock.sendall(frame(SETTINGS, ACK, 0))
                return

    def read_frame(self, deadline: float) -> tuple[int, int, int, bytes]:
        """The next frame (kind, flags, stream id, payload); raises ConnectionError once closed."""
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    head, payload = self.buffer[:9], self.buffer[9 : 9 + length]
                    self.buffer = self.buffer[9 + length :]
                    kind, flags = head[3], head[4]
                    self.frames_seen.append(kind)
                    return kind, flags, int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk

    def open_streams(self, path: str, count: int, first_id: int = 1) -> int:
        """Open `count` streams (HEADERS, no END_STREAM, no message); return the next stream id."""
        block = grpc_headers(path)
        ids = range(first_id, first_id + 2 * count, 2)
        self.sock.sendall(b"".join(frame(HEADERS, END_HEADERS, i, block) for i in ids))
        return first_id + 2 * count

    def drain(self, seconds: float) -> bool:
        """Read what the server sends for `seconds`; False once it closed the connection."""
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    self.read_frame(deadline)
                except TimeoutError:
                    return True
        except (ConnectionError, OSError):
            return False
        return True

    def close(self) -> None:
        self.sock.close()
