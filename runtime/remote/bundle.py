"""The runtime bundle: a deterministic tarball of `runtime/`, `requirements/runtime.txt` and, with
`--wheels`, the manifest of the wheelhouse (`wheels.json`; the wheels themselves are a separate
S3 object, `runtime.remote.wheelhouse`).

`stratus remote` uploads it to `s3://<models_bucket>/<BUNDLE_KEY>` (runtime.contract); each host's
`stratus-prepare.service` unpacks it into `<APP_DIR>/app` and builds the venv.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runtime.common.fsutil import sha256_file
from runtime.contract import WHEELS_MANIFEST
from runtime.remote.outputs import RemoteError

RUNTIME_REQUIREMENTS = "requirements/runtime.txt"
"""The pins the hosts install, at the same path in the repository and in the bundle."""

BUNDLE_MTIME = 315532800  # 1980-01-01: fixed, so the same sources give the same bytes
_SKIP_PARTS = ("__pycache__",)


@dataclass(frozen=True)
class BundleEntry:
    name: str
    """Path inside the tarball."""
    source: Path | bytes
    """The local file, or the member's bytes (a manifest written here)."""
    size: int


def bundle_entries(root: Path, wheels_manifest: bytes | None = None) -> list[BundleEntry]:
    """What goes into the bundle: `runtime/` (no caches or hidden files), `requirements/runtime.txt`
    (what the hosts install: no infra, test or lint tools) and, given, the wheelhouse's manifest
    (`runtime.remote.wheelhouse.Wheelhouse.manifest`) as `wheels.json`.

    Raises:
        RemoteError: a missing source, or a symlink (it would unpack to something else on the node).
    """
    found: list[tuple[str, Path]] = []
    req = root / RUNTIME_REQUIREMENTS
    if not (root / "runtime").is_dir() or not req.is_file():
        raise RemoteError(f"{root}: needs runtime/ and {RUNTIME_REQUIREMENTS} to build the runtime bundle")
    found.append((RUNTIME_REQUIREMENTS, req))
    for path in (root / "runtime").rglob("*"):
        rel = path.relative_to(root)
        if any(part in _SKIP_PARTS or part.startswith(".") for part in rel.parts) or path.suffix == ".pyc":
            continue
        if path.is_symlink():
            raise RemoteError(f"{path}: symlink in runtime/; replace it with a file")
        if path.is_file():
            found.append((rel.as_posix(), path))
    entries = [BundleEntry(name, path, path.stat().st_size) for name, path in found]
    if wheels_manifest is not None:
        entries.append(BundleEntry(WHEELS_MANIFEST, wheels_manifest, len(wheels_manifest)))
    return sorted(entries, key=lambda e: e.name)


def write_tar(entries: Sequence[BundleEntry], fileobj: BinaryIO) -> None:
    """Write `entries` as an uncompressed tar stream (sorted, fixed mtime/owner/modes) to `fileobj`,
    which needs only `write`: the same entries give the same bytes."""
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=lambda e: e.name):
            info = tarfile.TarInfo(e.name)
            info.size, info.mtime, info.mode = e.size, BUNDLE_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if isinstance(e.source, bytes):
                tar.addfile(info, io.BytesIO(e.source))
                continue
            with open(e.source, "rb") as f:
                tar.addfile(info, f)


def write_bundle(entries: Sequence[BundleEntry], dest: Path) -> str:
    """Write a deterministic tar.gz (sorted entries, fixed mtime/owner/modes); return its sha256."""
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        write_tar(entries, gz)
    return sha256_file(dest)[0]
