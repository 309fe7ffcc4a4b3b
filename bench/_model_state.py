"""Model-state bytes a rank really holds, and the ZeRO paper's formulas to compare them with.

Counting rule: every tensor reachable from the model, the optimizer state, and the ZeRO optimizer's
own attributes is classified once, by the storage it lives in (views of one flat buffer count once,
with the buffer's full size). Categories, first match wins:

- `params`: the model's parameters (under ZeRO-3 their `ds_tensor` partitions, plus any parameter
  still gathered whole at the time of the snapshot);
- `optim`: tensors in the wrapped torch optimizer's `state` (Adam `exp_avg`, `exp_avg_sq`, `step`);
- `master`: the fp32 master partition DeepSpeed keeps (`single_partition_of_fp32_groups` in ZeRO-1/2,
  `fp32_partitioned_groups_flat` in ZeRO-3); a master that is the parameter storage itself is
  already counted under `params`;
- `grads`: `.grad` of any of the above, DDP's reducer buckets, and every ZeRO attribute whose name
  says `grad` or `ipg` (partitioned gradient buffers, reduction buckets);
- `other`: any other tensor the ZeRO optimizer holds (reported so nothing hides).

Bytes are allocation sizes (`untyped_storage().nbytes()`): an `empty` bucket that is never fully
written still counts whole here even though untouched pages add nothing to RSS.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

CATEGORIES = ("params", "grads", "master", "optim", "other")
MAX_DEPTH = 6


class _Ledger:
    """Storage-deduplicated byte counts per category."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes = dict.fromkeys(CATEGORIES, 0)
        self.detail: dict[str, int] = {}
        """Bytes per `category:source` (the attribute a storage was first found under)."""

    def add(self, category: str, tensor: torch.Tensor | None, source: str = "") -> None:
        if tensor is None or not isinstance(tensor, torch.Tensor) or tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        if storage.nbytes() == 0 or storage.data_ptr() in self.seen:
            return
        self.seen.add(storage.data_ptr())
        self.bytes[category] += storage.nbytes()
        key = f"{category}:{source or category}"
        self.detail[key] = self.detail.get(key, 0) + storage.nbytes()

    def result(self) -> dict[str, Any]:
        return {**self.bytes, "detail": self.detail}


def _tensors(obj: Any, depth: int = 0, path: str = "", visited: set[int] | None = None) -> Iterator[tuple]:
    """(attribute path, tensor) for tensors in containers and DeepSpeed objects under `obj`."""
    visited = set() if visited is None else visited
    if depth > MAX_DEPTH or id(obj) in visited:
        return
    visited.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
        if obj.grad is not None:
            yield f"{path}.grad", obj.grad
        return
    if isinstance(obj, nn.Module | torch.optim.Optimizer):
        return  # counted from their own roots, never by walking into them
    if isinstance(obj, dict):
        items = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, list | tuple | set | frozenset):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    elif type(obj).__module__.startswith("deepspeed") and hasattr(obj, "__dict__"):
        items = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
    else:
        return
    for sub_path, value in items:
        yield from _tensors(value, depth + 1, sub_path, visited)


def _zero_category(path: str) -> str:
    name = path.lower()
    if name.endswith(".grad") or "grad" in name or "ipg" in name:
        return "grads"
    if "fp32" in name or "master" in name:
        return "master"
    return "other"


def _root(path: str) -> str:
    """`.ipg_buckets[torch.float32].buffer[0]` -> `ipg_buckets..buffer`: the attribute, without indices."""
    out, depth = [], 0
    for ch in path:
        depth += ch == "["
        if depth == 0:
            out.append(ch)
        depth -= ch == "]"
    return "".join(out).lstrip(".")


def zero_model_state(engine: Any) -> dict[str, Any]:
    """Bytes per category (and `detail` per source) held by this rank of a DeepSpeed engine, ZeRO-1/2/3."""
    ledger = _Ledger()
    for p in engine.module.parameters():
        ledger.add("params", getattr(p, "ds_tensor", None), "ds_tensor")
        if p.numel() > 0:  # a ZeRO-3 parameter still gathered whole, or a ZeRO-1/2 full parameter
            ledger.add("params", p.data, "param.data")
        ledger.add("grads", p.grad, "param.grad")
    zero_opt = engine.optimizer
    inner = getattr(zero_opt, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer):
        for state in inner.state.values():
            for value in state.values():
                ledger.add("optim", value, "optimizer.state")
    for path, tensor in _tensors(zero_opt):
        ledger.add(_zero_category(path), tensor, _root(path))
    return ledger.result()


def ddp_model_state(ddp: nn.parallel.DistributedDataParallel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Bytes per category held by this rank under plain DDP, including the reducer's buckets.

    With `gradient_as_bucket_view=False` (the default) the reducer keeps flat bucket buffers apart
    from `param.grad`; their sizes come from the reducer itself. With it on, `.grad` are views of
    the buckets and are counted once.
    """
    ledger = _Ledger()
    for p in ddp.module.parameters():
        ledger.add("params", p.data)
    for p in ddp.module.parameters():
        ledger.add("grads", p.grad)
    if not ddp.gradient_as_bucket_view:
        buckets = sum(b.buffer().nbytes for b in ddp.reducer._get_zeros_like_grad_buckets())
        ledger.bytes["grads"] += buckets
        ledger.detail["grads:reducer buckets"] = buckets
    for state in optimizer.state.values():
        for value in state.values():
            ledger.add("optim", value)
    return ledger.result()


def paper_bytes(num_params: int, world_size: int, zero_stage: int, precision: str) -> tuple[int, str]:
    """(bytes per rank, formula) from the ZeRO paper (Rajbhandari et al. 2020, section 5) with Adam.

    fp32 (no mixed precision: the fp32 parameters are the master weights): params 4, grads 4,
    Adam K=8 (momentum + variance) bytes per parameter. bf16 mixed precision, the paper's case:
    params 2, grads 2, K=12 (fp32 master + momentum + variance). Stage 0 is plain data parallel.
    """
    n = world_size
    p_bytes, g_bytes, k = (4, 4, 8) if precision == "fp32" else (2, 2, 12)
    if zero_stage == 0:
        per_param, formula = p_bytes + g_bytes + k, f"{p_bytes}+{g_bytes}+{k} = {p_bytes + g_bytes + k}Psi"
    elif zero_stage == 1:
        per_param, formula = p_bytes + g_bytes + k / n, f"{p_bytes}+{g_bytes}+{k}/N Psi"
    elif zero_stage == 2:
        per_param, formula = p_bytes + (g_bytes + k) / n, f"{p_bytes}+({g_bytes}+{k})/N Psi"
    elif zero_stage == 3:
        per_param, formula = (p_bytes + g_bytes + k) / n, f"{p_bytes + g_bytes + k}Psi/N"
    else:
        raise ValueError(f"zero_stage must be 0..3, got {zero_stage}")
    return int(per_param * num_params), formula
