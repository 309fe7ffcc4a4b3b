"""The runtime bundle: a deterministic tarball of `runtime/`, `requirements/runtime.txt` and optional wheels.

`stratus remote` uploads it to `s3://<models_bucket>/<BUNDLE_KEY>` (runtime.contract); each host's
`stratus-prepare.service` unpacks it into `<APP_DIR>/app` and builds the venv.
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.common.fsutil import sha256_file
from runtime.remote.outputs import RemoteError

RUNTIME_REQUIREMENTS = "requirements/runtime.txt"
"""The pins the hosts install, at the same path in the repository and in the bundle."""

BUNDLE_MTIME = 315532800  # 1980-01-01: fixed, so the same sources give the same bytes
_SKIP_PARTS = ("__pycache__",)


@dataclass(frozen=True)
class BundleEntry:
    name: str
    """Path inside the tarball."""
    source: Path
    """The local file."""
    size: int


def bundle_entries(root: Path, wheels: Path | None = None) -> list[BundleEntry]:
    """What goes into the bundle: `runtime/` (no caches or hidden files), `requirements/runtime.txt`
    (what the hosts install: no infra, test or lint tools), wheels.

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
    if wheels is not None:
        whls = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        if not whls:
            raise RemoteError(f"--wheels {wheels}: no .whl files there (fill it with `stratus wheels --dest {wheels}`)")
        found += [(f"wheels/{w.name}", w) for w in whls]
    return [BundleEntry(name, path, path.stat().st_size) for name, path in sorted(found)]


def write_bundle(entries: Sequence[BundleEntry], dest: Path) -> str:
    """Write a deterministic tar.gz (sorted entries, fixed mtime/owner/modes); return its sha256."""
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for e in sorted(entries, key=lambda e: e.name):
            info = tarfile.TarInfo(e.name)
            info.size, info.mtime, info.mode = e.size, BUNDLE_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(e.source, "rb") as f:
                tar.addfile(info, f)
    return sha256_file(dest)[0]
