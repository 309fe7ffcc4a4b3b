"""A run's checkpoints on local disk: the layout, the manifest, verification, retention.

`<ckpt_dir>/<tag>/` (`global_step<N>`) holds DeepSpeed's shards, `rng/rank<r>.json`,
`train_config.json`, `train_state.json` and, once committed, `manifest.json` (sha256 + size of every
other file); `<ckpt_dir>/latest` names the newest committed tag. A tag without a manifest that
verifies was never committed and does not exist for resume, export or sync. Pure file work (no
torch): the collective commit that writes these is `runtime.checkpoint.commit`.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.common.fsutil import atomic_write, fsync_dir, sha256_file
from runtime.common.log import get_logger

FORMAT = "stratus-checkpoint/1"
MANIFEST = "manifest.json"
LATEST = "latest"
STATE = "train_state.json"
CONFIG = "train_config.json"
_TAG_RE = re.compile(r"^global_step(\d+)$")

log = get_logger()


class CheckpointError(RuntimeError):
    """No usable checkpoint, or a save that did not commit; the message says why."""


def tag_for(step: int) -> str:
    return f"global_step{step}"


def step_of(tag: str) -> int | None:
    m = _TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def _files(tag_dir: Path) -> list[Path]:
    return sorted(p for p in tag_dir.rglob("*") if not p.is_dir() and p.name != MANIFEST)


def hash_files(tag_dir: Path, *, fsync: bool = False) -> dict[str, dict[str, Any]]:
    """`{relpath: {"sha256", "size"}}` of every file under `tag_dir` but the manifest; no symlinks."""
    files = {}
    for path in _files(tag_dir):
        if path.is_symlink():
            raise CheckpointError(f"{path}: symlink inside a checkpoint; refusing to commit it")
        sha, size = sha256_file(path, fsync=fsync)
        files[str(path.relative_to(tag_dir))] = {"sha256": sha, "size": size}
    return files


def write_manifest(tag_dir: Path, **info: Any) -> dict[str, Any]:
    """Hash (and fsync) every file under `tag_dir`, then write `manifest.json` atomically."""
    files = hash_files(tag_dir, fsync=True)
    for sub in {p.parent for p in tag_dir.rglob("*")} | {tag_dir}:
        fsync_dir(sub)
    manifest = {"format": FORMAT, "tag": tag_dir.name, **info, "files": files}
    atomic_write(tag_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def verify_checkpoint(tag_dir: Path, world_size: int | None = None, *, check_hashes: bool = True) -> dict[str, Any]:
    """Return the manifest of `tag_dir` if every file is present, unmodified, and nothing extra.

    `check_hashes=False` checks presence and sizes only: a cheap pre-check before starting ranks.

    Raises:
        CheckpointError: naming the first problem (missing manifest or file, size or hash
            mismatch, extra or symlinked file, world size different from `world_size`).
    """
    tag_dir = Path(tag_dir)
    try:
        manifest = json.loads((tag_dir / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{tag_dir}: no {MANIFEST} (save never committed)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{tag_dir}/{MANIFEST}: unreadable ({e})") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        raise CheckpointError(f"{tag_dir}/{MANIFEST}: not a {FORMAT} manifest")
    listed = manifest["files"]
    for rel, meta in listed.items():
        path = tag_dir / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise CheckpointError(f"{tag_dir}: manifest names {rel!r} outside the checkpoint")
        if path.is_symlink():
            raise CheckpointError(f"{path}: is a symlink")
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        size = path.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(f"{path}: size {size} bytes, manifest says {meta['size']} (truncated?)")
        if check_hashes and sha256_file(path)[0] != meta["sha256"]:
            raise CheckpointError(f"{path}: sha256 does not match the manifest (modified or corrupt)")
    extra = [str(p.relative_to(tag_dir)) for p in _files(tag_dir) if str(p.relative_to(tag_dir)) not in listed]
    if extra:
        raise CheckpointError(f"{tag_dir}: files not in the manifest: {', '.join(extra[:5])}")
    if world_size is not None and manifest.get("world_size") != world_size:
        raise CheckpointError(
            f"{tag_dir}: saved with world size {manifest.get('world_size')}, this run has {world_size}; "
            f"relaunch with --nproc {manifest.get('world_size')} (ZeRO shards are per rank)"
        )
    return manifest


def candidates(ckpt_dir: Path) -> list[Path]:
    """Tag directories under `ckpt_dir`, newest step first."""
    if not ckpt_dir.is_dir():
        return []
    tags = [(step_of(p.name), p) for p in ckpt_dir.iterdir() if p.is_dir() and step_of(p.name) is not None]
    return [p for _, p in sorted(tags, key=lambda t: t[0], reverse=True)]


def existing_run_message(run_name: str, where: str) -> str:
    """The one wording of "this run already has checkpoints" (local directory or S3 prefix)."""
    return (
        f"run {run_name!r} already has checkpoints in {where}; pass --resume to continue it "
        "or --run-name NEW to start a new run (nothing was deleted)"
    )


def existing_run_problem(ckpt_dir: Path, run_name: str) -> str | None:
    """The message refusing a new run when `ckpt_dir` holds checkpoints (it must not overwrite
    them); None when it holds none. Callers raise it as their stage's bad-input error."""
    return existing_run_message(run_name, str(ckpt_dir)) if candidates(ckpt_dir) else None


def find_latest_verified(ckpt_dir: Path, world_size: int | None = None, *, check_hashes: bool = True) -> Path:
    """The newest tag directory whose manifest verifies; others are skipped with a warning.

    Raises:
        CheckpointError: when no checkpoint verifies, listing why each one was rejected.
    """
    ckpt_dir = Path(ckpt_dir)
    reasons = []
    for tag_dir in candidates(ckpt_dir):
        try:
            verify_checkpoint(tag_dir, world_size, check_hashes=check_hashes)
            return tag_dir
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", tag_dir.name, e)
            reasons.append(str(e))
    detail = "; ".join(reasons) if reasons else "no checkpoint directories"
    raise CheckpointError(f"no verified checkpoint in {ckpt_dir}: {detail}")


def prune(ckpt_dir: Path, keep: int, newest: Path, remove: Callable[[Path], None] = shutil.rmtree) -> list[Path]:
    """Delete all but the `keep` newest checkpoints, after `newest` has committed.

    `newest` is never removed, whatever `keep` says; partial (uncommitted) directories older than
    it are removed too. A failed delete is logged and skipped, so training goes on.
    """
    newest_step = step_of(newest.name)
    kept = 0
    removed = []
    for tag_dir in candidates(ckpt_dir):
        committed = (tag_dir / MANIFEST).is_file()
        if tag_dir == newest or (committed and kept < keep):
            kept += committed
            continue
        if step_of(tag_dir.name) > newest_step:
            continue  # not ours to judge: newer than what we just committed
        try:
            remove(tag_dir)
            removed.append(tag_dir)
        except OSError as e:
            log.warning("could not delete old checkpoint %s (%s); training continues", tag_dir, e)
    return removed
