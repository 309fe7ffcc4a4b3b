"""One rank of `bench/llm.py` (started by torchrun): gpt-small under DDP, FSDP2 or DeepSpeed ZeRO.

Not run by hand. DeepSpeed rows drive the production `runtime.train.loop.Trainer` (setup, then
`train_step`); DDP and FSDP2 rows train the same model (`runtime.train.gpt.build_gpt`, same seed)
on the same packed batches with `torch.optim.AdamW` (fused where it applies). Each rank times
`--steps` steps after `--warmup`, takes one more step with a model-state snapshot between backward
and optimizer step, and writes `rank<N>.json` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _model_state import _Ledger, ddp_model_state, zero_model_state

from runtime.common.tokens import VOCAB_SIZE
from runtime.train.data import epoch_order, rank_batch
from runtime.train.flops import measure_matmul_peak
from runtime.train.gpt import build_gpt
from runtime.train.loading import load_config
from runtime.train.loop import Trainer
from runtime.train.models import count_parameters
from runtime.train.text import load_text_dataset


class TorchBaseline:
    """DDP or FSDP2 (`fully_shard` on every block, then the root) + AdamW; not product code."""

    def __init__(self, cfg, engine: str):
        dist.init_process_group("gloo")
        self.cfg, self.rank, self.world = cfg, dist.get_rank(), dist.get_world_size()
        self.data = load_text_dataset(cfg.data, cfg.model.seq_len, cfg.seed)
        self.x_all = torch.from_numpy(self.data.x)
        torch.manual_seed(cfg.seed)
        model = build_gpt(cfg.model)
        self.num_params = count_parameters(model)
        if engine == "ddp":
            self.engine = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            self.engine = fully_shard(model)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.engine.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=0.0)
        self.step = 0

    def train_step(self, *, phases: dict[str, float] | None = None, before_step=None) -> float:
        spe = len(self.data.train_idx) // self.cfg.global_batch_size
        epoch, in_epoch = divmod(self.step, spe)
        idx = rank_batch(
            epoch_order(self.data.train_idx, self.cfg.seed, epoch),
            in_epoch,
            self.cfg.global_batch_size,
            self.rank,
            self.world,
        )
        ids = self.x_all[idx]
        loss = F.cross_entropy(self.engine(ids[:, :-1]).reshape(-1, VOCAB_SIZE), ids[:, 1:].reshape(-1))
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        if before_step is not None:
            before_step()
        self.opt.step()
        self.step += 1
        return loss.item()


def fsdp_model_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Bytes of the local shards of parameters, gradients and AdamW state (DTensors) on this rank."""
    ledger = _Ledger()

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    for p in model.parameters():
        ledger.add("params", local(p.data))
        ledger.add("grads", local(p.grad) if p.grad is not None else None)
    for state in opt.state.values():
        for value in state.values():
            ledger.add("optim", local(value) if isinstance(value, torch.Tensor) else None)
    return ledger.result()


def build(args: argparse.Namespace):
    overrides = [
        f"parallel.zero_stage={args.zero_stage}",
        f"parallel.offload={args.offload}",
        "data.max_bytes=1000000",
        "data.val_max_sequences=8",
    ]
    cfg = load_config("gpt-small", overrides=overrides)
    if args.engine in ("ddp", "fsdp2"):
        return TorchBaseline(cfg, args.engine), cfg
    # Same training as the torch rows: no gradient clipping (DeepSpeed clips to 1.0 by default).
    trainer = Trainer(cfg, ds_overrides={"gradient_clipping": 0.0, "zero_optimization": {"reduce_bucket_size": 5e6}})
    trainer.setup()
    return trainer, cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--engine", choices=("ddp", "fsdp2", "deepspeed"), required=True)
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--offload", default="none")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    runner, cfg = build(args)
    rank, world = dist.get_rank(), dist.get_world_size()
    peak = [0.0]
    peak[0] = measure_matmul_peak(torch.float32, "cpu")
    losses = [runner.train_step(phases={}) for _ in range(args.warmup)]
    dist.barrier()
    start = time.perf_counter()
    losses += [runner.train_step(phases={}) for _ in range(args.steps)]
    dist.barrier()
    elapsed = time.perf_counter() - start
    snapshot: dict[str, Any] = {}

    def take_snapshot() -> None:
        if args.engine == "ddp":
            snapshot["state"] = ddp_model_state(runner.engine, runner.opt)
        elif args.engine == "fsdp2":
            snapshot["state"] = fsdp_model_state(runner.engine, runner.opt)
        else:
            snapshot["state"] = zero_model_state(runner.engine)

    losses.append(runner.train_step(phases={}, before_step=take_snapshot))
    result = {
        "rank": rank,
        "world_size": world,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "tokens_per_step": cfg.global_batch_size * cfg.model.seq_len,
        "elapsed_s": elapsed,
        "peak_flops": peak[0],
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "model_state": snapshot["state"],
        "num_params": runner.num_params,
        "losses": losses,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
