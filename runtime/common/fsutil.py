"""Durable file primitives shared by checkpoints, artifacts and model repositories."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path, *, fsync: bool = False) -> tuple[str, int]:
    """`(sha256 hex, size in bytes)` of a file, read in 1 MiB chunks; `fsync` also flushes it to disk."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest(), size


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` so that readers see the old or the new content, never a mix, and it survives a crash.

    A temp file in the same directory is written, fsynced and `os.replace`d over `path`, then the
    directory is fsynced. `mode` applies to the new file (mkstemp would leave it 0600).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def replaced_dir(out_dir: Path) -> Iterator[Path]:
    """Build a directory in a sibling temp dir (yielded, mode 0755) and swap it in for `out_dir`
    when the block ends without an error: a previous `out_dir` is replaced only once the new one is
    complete. On any error the temp dir is removed and `out_dir` is left as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    try:
        staging.chmod(0o755)
        yield staging
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
