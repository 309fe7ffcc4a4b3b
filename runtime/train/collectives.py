"""The few collectives the training loop and checkpoints use, on CPU tensors (gloo or NCCL)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64). Collective."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def all_agree(ok: bool) -> bool:
    """True on every rank iff `ok` is true on every rank (blocks until all ranks arrive)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def any_rank(flag: bool) -> bool:
    """True on every rank iff `flag` is true on some rank. Collective."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def release_shm_buffer(shm_dir: Path = Path("/dev/shm")) -> Path | None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer; return its path if one was removed.

    DeepSpeed's shared-memory comm op (CPU, every rank on one host) creates a ~66 MiB POSIX
    shared-memory segment per rank, `deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`,
    and never unlinks it: each CPU run would leave them in /dev/shm (RAM) until reboot. Every rank
    maps all the others' segments at start-up, so unlinking after training is safe: the mappings
    stay valid until the processes exit.
    """
    name = "_".join(
        [
            "deepspeed_allreduce_buffer",
            str(os.getuid()),
            os.environ.get("MASTER_ADDR", ""),
            os.environ.get("MASTER_PORT", ""),
            os.environ.get("RANK", "0"),
        ]
    )
    path = shm_dir / name
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path
