"""Crash-safe checkpoints around DeepSpeed's `save_checkpoint`/`load_checkpoint`.

Commit protocol (a checkpoint without a verifying manifest does not exist):
  1. rank 0 clears a stale partial `<tag>/` left by an earlier crash; barrier;
  2. every rank writes its DeepSpeed shards and its RNG state into `<tag>/`;
  3. all ranks agree that every rank succeeded (all-reduce MIN of a success flag; a dead rank
     makes the others fail at the process-group timeout instead of hanging);
  4. rank 0 writes `train_config.json`, `train_state.json`, then `manifest.json` (sha256 + size of
     every file, each fsynced), then replaces `latest` atomically (temp, fsync, os.replace).
DeepSpeed's own `latest` is never written (`save_latest=False`), so it cannot name a partial tag.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.common.fsutil import atomic_write, fsync_dir, sha256_file
from runtime.common.log import get_logger
from runtime.train.config import ConfigError

FORMAT = "stratus-checkpoint/1"
MANIFEST = "manifest.json"
LATEST = "latest"
STATE = "train_state.json"
CONFIG = "train_config.json"
_TAG_RE = re.compile(r"^global_step(\d+)$")
# Crash tests set STRATUS_FAILPOINT=kill-during-save:<rank>:<step>: that rank SIGKILLs itself after
# writing its DeepSpeed shards of that step and before the commit agreement, like a reclaimed node.
_failpoint = os.environ.get("STRATUS_FAILPOINT", "")

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


def refuse_existing_run(ckpt_dir: Path, run_name: str) -> None:
    """Raise ConfigError when `ckpt_dir` holds checkpoints: a new run must not overwrite them."""
    if candidates(ckpt_dir):
        raise ConfigError(existing_run_message(run_name, str(ckpt_dir)))


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


# --- RNG state (JSON, no pickle) -------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))


# --- distributed save and restore ------------------------------------------------------------------


def commit(
    engine: Any,
    ckpt_dir: Path,
    *,
    step: int,
    state: dict[str, Any],
    config: dict[str, Any],
    config_digest: str,
    zero_stage: int,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Save a checkpoint on all ranks and commit it (see the module docstring). Collective.

    Raises:
        CheckpointError: on every rank, when any rank failed to write its part; nothing commits.
    """
    import torch.distributed as dist

    from runtime.train.collectives import all_agree

    rank, world = dist.get_rank(), dist.get_world_size()
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tag_dir.exists():
            # A stale partial save of this tag (a crash mid-save), or a re-save of the same step.
            shutil.rmtree(tag_dir)
    dist.barrier()
    error = None
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
        if _failpoint == f"kill-during-save:{rank}:{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        (tag_dir / "rng").mkdir(parents=True, exist_ok=True)
        atomic_write(tag_dir / "rng" / f"rank{rank}.json", json.dumps(rng_state()).encode())
    except Exception as e:  # any failure of this rank must reach the agreement below
        error = e
        log.error("rank %d failed to save %s: %s", rank, tag, e)
    if not all_agree(error is None):
        raise CheckpointError(f"checkpoint {tag} not committed: a rank failed to save") from error
    if rank == 0:
        atomic_write(tag_dir / CONFIG, json.dumps(config, indent=1, sort_keys=True).encode())
        atomic_write(tag_dir / STATE, json.dumps(state, indent=1, sort_keys=True).encode())
        for name, content in (extra_files or {}).items():  # e.g. the feature statistics of tabular runs
            atomic_write(tag_dir / name, content)
        write_manifest(tag_dir, step=step, world_size=world, zero_stage=zero_stage, config_digest=config_digest)
        atomic_write(ckpt_dir / LATEST, tag.encode())
    dist.barrier()
    return tag_dir


def restore(engine: Any, ckpt_dir: Path) -> dict[str, Any]:
    """Load the newest verified checkpoint on all ranks; return its `train_state.json`. Collective.

    Rank 0 picks the tag (hashing once) and broadcasts it, so all ranks load the same one.

    Raises:
        CheckpointError: on every rank when nothing verifies or DeepSpeed cannot load it.
    """
    import torch.distributed as dist

    world = dist.get_world_size()
    chosen = torch.tensor([-1], dtype=torch.int64)
    reason = ""
    if dist.get_rank() == 0:
        try:
            chosen[0] = step_of(find_latest_verified(ckpt_dir, world).name)
        except CheckpointError as e:
            reason = str(e)
    dist.broadcast(chosen, src=0)
    if chosen.item() < 0:
        raise CheckpointError(reason or f"no verified checkpoint in {ckpt_dir} (see rank 0)")
    tag = tag_for(int(chosen.item()))
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_module_strict=True)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {ckpt_dir / tag}")
    tag_dir = ckpt_dir / tag
    set_rng_state(json.loads((tag_dir / "rng" / f"rank{dist.get_rank()}.json").read_text()))
    return json.loads((tag_dir / STATE).read_text())
