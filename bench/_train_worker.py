"""One rank of `bench/train_memory_throughput.py`; started by torchrun (DDP) or DeepSpeed's launcher.

Not run by hand: the bench builds the command line. DeepSpeed rows drive the production training
loop, `runtime.train.loop.Trainer` (setup, then `train_step` per step), on the `mlp-large` preset
with 1,280 builtin rows (1,024 after the validation split, cycled by epoch as in training). DDP
rows are the baseline: plain `torch.nn.parallel.DistributedDataParallel` + AdamW, same model init,
same batches. Each rank times `--steps` steps after `--warmup` steps, takes one more step with a
model-state snapshot between backward and optimizer step (the moment params, gradients and
optimizer state all exist), and writes `rank<N>.json` into `--out`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _model_state import ddp_model_state, zero_model_state

from runtime.train.config import TrainConfig
from runtime.train.data import check_batch_fits, epoch_order, load_dataset, rank_batch
from runtime.train.loading import load_config
from runtime.train.loop import Trainer
from runtime.train.models import build_mlp, count_parameters

NUM_ROWS = 1280  # 1,024 training rows: 8 global batches of 128, small enough not to set the RSS peak


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_config(args: argparse.Namespace) -> TrainConfig:
    return load_config(
        "mlp-large",
        overrides=[
            f"parallel.zero_stage={args.zero_stage}",
            f"parallel.offload={args.offload}",
            f"parallel.precision={args.precision}",
            f"data.num_samples={NUM_ROWS}",
            "data.val_fraction=0.2",
        ],
    )


class DdpBaseline:
    """The baseline rows: DDP + AdamW on the same data order as `Trainer` (not product code)."""

    def __init__(self, cfg: TrainConfig, args: argparse.Namespace):
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo")
        self.cfg, self.rank, self.world = cfg, dist.get_rank(), dist.get_world_size()
        self.data = load_dataset(cfg.data, cfg.seed)
        self.steps_per_epoch = check_batch_fits(cfg.global_batch_size, len(self.data.train_idx))
        self.x_all, self.y_all = torch.from_numpy(self.data.x), torch.from_numpy(self.data.y)
        torch.manual_seed(cfg.seed)
        model = build_mlp(self.data.num_features, cfg.model)
        self.engine = DistributedDataParallel(model, gradient_as_bucket_view=args.bucket_view)
        o = cfg.optim
        self.opt = torch.optim.AdamW(
            self.engine.parameters(),
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            weight_decay=o.weight_decay,
            fused=args.fused_adamw or None,
        )
        self.num_params = count_parameters(model)
        self.step = 0

    def train_step(self, *, phases: dict[str, float], before_step=None) -> float:
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        order = epoch_order(self.data.train_idx, self.cfg.seed, epoch)
        idx = rank_batch(order, in_epoch, self.cfg.global_batch_size, self.rank, self.world)
        t0 = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(self.engine(self.x_all[idx]).squeeze(-1).float(), self.y_all[idx])
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        t2 = time.perf_counter()
        if before_step is not None:
            before_step()
        self.opt.step()
        value = loss.item()
        t3 = time.perf_counter()
        for key, seconds in (("forward", t1 - t0), ("backward", t2 - t1), ("step", t3 - t2)):
            phases[key] = phases.get(key, 0.0) + seconds
        self.step += 1
        return value


def build(args: argparse.Namespace, cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """(the object with `train_step`, info for the result) for DDP or the production Trainer."""
    if args.engine == "ddp":
        runner = DdpBaseline(cfg, args)
        return runner, {"num_params": runner.num_params, "optimizer": type(runner.opt).__name__}
    trainer = Trainer(cfg, ds_overrides=json.loads(args.ds_overrides))
    trainer.setup()
    inner = getattr(trainer.engine.optimizer, "optimizer", trainer.engine.optimizer)
    return trainer, {
        "num_params": trainer.num_params,
        "optimizer": type(inner).__name__,
        "ds_config": trainer.ds_config,
    }


def timed_steps(runner: Any, args: argparse.Namespace) -> tuple[dict[str, Any], list[float]]:
    """Run `--steps` timed steps (barrier before and after); return measurements and losses."""
    dist.barrier()
    profiler = cProfile.Profile() if args.profile else None
    faults_start, cpu_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, cpu_seconds()
    t_start = time.perf_counter()
    if profiler:
        profiler.enable()
    phases: dict[str, float] = {}
    step_s, losses = [], []
    for _ in range(args.steps):
        before = sum(phases.values())
        losses.append(runner.train_step(phases=phases))
        step_s.append(sum(phases.values()) - before)
    dist.barrier()
    elapsed = time.perf_counter() - t_start
    if profiler:
        profiler.disable()
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / f"profile-rank{dist.get_rank()}.txt", "w") as f:
            pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(60)
    return {
        "elapsed_s": elapsed,
        "phase_s": phases,
        "step_s": step_s,
        "cpu_s_per_step": (cpu_seconds() - cpu_start) / args.steps,
        "page_faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start) / args.steps,
    }, losses


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--engine", choices=("ddp", "deepspeed"), required=True)
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--offload", default="none")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--ds-overrides", default="{}", help="JSON deep-merged over the generated DeepSpeed config")
    p.add_argument("--bucket-view", action="store_true", help="DDP gradient_as_bucket_view=True")
    p.add_argument("--fused-adamw", action="store_true", help="DDP torch.optim.AdamW(fused=True)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profile", action="store_true", help="cProfile the timed steps into <out>/profile-rank<N>.txt")
    p.add_argument("--local_rank", type=int, default=None, help="set by DeepSpeed's launcher")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_launch = time.perf_counter()
    rss_start = current_rss()
    cfg = bench_config(args)
    runner, info = build(args, cfg)
    t_built, rss_built = time.perf_counter(), current_rss()
    rank, world = dist.get_rank(), dist.get_world_size()
    losses = [runner.train_step(phases={}) for _ in range(args.warmup)]
    t_warm = time.perf_counter()
    measured, timed_losses = timed_steps(runner, args)
    snapshot: dict[str, Any] = {}

    def take_snapshot() -> None:
        engine = runner.engine
        snapshot["state"] = ddp_model_state(engine, runner.opt) if args.engine == "ddp" else zero_model_state(engine)

    losses += [*timed_losses, runner.train_step(phases={}, before_step=take_snapshot)]
    result = {
        "rank": rank,
        "world_size": world,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "steps": args.steps,
        "global_batch": cfg.global_batch_size,
        **measured,
        "setup_s": {"build": t_built - t_launch, "warmup": t_warm - t_built},
        "rss_start": rss_start,
        "rss_built": rss_built,
        "rss_end": current_rss(),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "model_state": snapshot["state"],
        "final_loss": losses[-1],
        "losses": losses,
        **{k: v for k, v in info.items() if k != "ds_config"},
    }
    if rank == 0 and "ds_config" in info:
        result["ds_config"] = info["ds_config"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
