"""The few collectives the training loop uses, on CPU tensors (gloo or NCCL); the checkpoint commit's
agreement is `runtime.checkpoint.commit.all_agree`."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64). Collective."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank iff `flag` is true on some rank. Collective."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
