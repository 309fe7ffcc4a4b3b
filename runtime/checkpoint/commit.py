"""The collective commit and restore of a checkpoint around DeepSpeed's `save_checkpoint`/`load_checkpoint`.

Commit protocol (a checkpoint without a verifying manifest does not exist):
  1. rank 0 clears a stale partial `<tag>/` left by an earlier crash; barrier;
  2. every rank writes its DeepSpeed shards and its RNG state into `<tag>/`;
  3. all ranks agree that every rank succeeded (all-reduce MIN of a success flag; a dead rank
     makes the others fail at the process-group timeout instead of hanging);
  4. rank 0 writes `train_config.json`, `train_state.json`, then `manifest.json` (sha256 + size of
     every file, each fsynced; `runtime.checkpoint.local`), then replaces `latest` atomically.
DeepSpeed's own `latest` is never written (`save_latest=False`), so it cannot name a partial tag.

Crash tests inject a hook instead of setting a variable the product reads: `HOOKS.after_shards`
runs on every rank between step 2's shards and its RNG state, e.g. a SIGKILL of one rank at one
step, like a reclaimed node (`tests/runtime/train/failpoint.py`).
"""

from __future__ import annotations

import base64
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.checkpoint.local import (
    CONFIG,
    LATEST,
    STATE,
    CheckpointError,
    find_latest_verified,
    step_of,
    tag_for,
    write_manifest,
)
from runtime.common.fsutil import atomic_write
from runtime.common.log import get_logger

log = get_logger()


@dataclass
class CommitHooks:
    """Test hooks of `commit`; the product never sets them."""

    after_shards: Callable[[int, int], None] = lambda rank, step: None
    """Called with (rank, step) on every rank once its DeepSpeed shards of that step are written."""


HOOKS = CommitHooks()
"""The hooks `commit` calls; a test process replaces its fields before training starts."""


def all_agree(ok: bool) -> bool:
    """True on every rank iff `ok` is true on every rank (blocks until all ranks arrive)."""
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


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
        HOOKS.after_shards(rank, step)
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
        for name, content in (extra_files or {}).items():  # e.g. feature statistics, a model's hf/ files
            (tag_dir / name).parent.mkdir(parents=True, exist_ok=True)
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
