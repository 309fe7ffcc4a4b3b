"""Byte-level tokens: ids 0-255 are the UTF-8 bytes of the text, 256 ends a document.

No vocabulary file and no download: any text round-trips exactly, and a model's vocabulary is
always `VOCAB_SIZE` entries. Decoding drops end-of-text ids and replaces byte sequences that are
not valid UTF-8 (a model can emit them) with U+FFFD.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

EOT = 256
"""End-of-text id, appended after every document when sequences are packed."""

VOCAB_SIZE = 257


def encode(text: str) -> list[int]:
    """Token ids of `text` (its UTF-8 bytes)."""
    return list(text.encode("utf-8"))


def decode(ids: Iterable[int]) -> str:
    """Text of token ids; end-of-text ids are dropped, invalid UTF-8 becomes U+FFFD.

    Raises:
        ValueError: an id outside [0, VOCAB_SIZE).
    """
    return bytes(_bytes_of(ids)).decode("utf-8", errors="replace")


def _bytes_of(ids: Iterable[int]) -> list[int]:
    out = []
    for i in ids:
        i = int(i)
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"token id {i} is outside the byte vocabulary [0, {VOCAB_SIZE})")
        if i != EOT:
            out.append(i)
    return out


class StreamDecoder:
    """Turns ids into text piece by piece, holding back the bytes of an unfinished UTF-8 character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Iterable[int]) -> str:
        return self._decoder.decode(bytes(_bytes_of(ids)))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
