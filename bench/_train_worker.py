"""One rank of `bench/train_memory_throughput.py`; started by torchrun (DDP) or DeepSpeed's launcher.

Not run by hand: the bench builds the command line. Each rank trains the `mlp-large` preset's model
on the builtin dataset (1,024 rows, cycled), times `--steps` steps after `--warmup` steps, takes
one more step with a model-state snapshot between backward and optimizer step (the moment params,
gradients and optimizer state all exist), and writes `rank<N>.json` into `--out`.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from _model_state import ddp_model_state, zero_model_state  # noqa: E402
from train_memory_throughput import deep_merge  # noqa: E402

from runtime.train.config import TrainConfig, deepspeed_config, load_config  # noqa: E402
from runtime.train.data import epoch_order, make_builtin, rank_batch  # noqa: E402
from runtime.train.models import build_mlp, count_parameters  # noqa: E402

NUM_ROWS = 1024  # 8 global batches of 128: enough distinct batches, small enough not to set the RSS peak


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_config(args: argparse.Namespace) -> TrainConfig:
    return load_config(
        "mlp-large",
        overrides=[
            f"parallel.zero_stage={args.zero_stage}",
            f"parallel.offload={args.offload}",
            f"parallel.precision={args.precision}",
        ],
    )


def build_engine(args: argparse.Namespace, cfg: TrainConfig, num_features: int) -> tuple[Any, Any, dict]:
    """(forward callable, step object, info) for DDP or a DeepSpeed engine."""
    world = dist.get_world_size()
    if args.engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = build_mlp(num_features, cfg.model)
        ddp = DistributedDataParallel(model, gradient_as_bucket_view=args.bucket_view)
        o = cfg.optim
        opt = torch.optim.AdamW(
            ddp.parameters(),
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            weight_decay=o.weight_decay,
            fused=args.fused_adamw or None,
        )
        return ddp, opt, {"num_params": count_parameters(model), "optimizer": type(opt).__name__}
    import deepspeed

    ds = deep_merge(deepspeed_config(cfg, world_size=world, device="cpu"), json.loads(args.ds_overrides))
    with deepspeed.zero.Init(enabled=args.zero_stage == 3, config_dict_or_path=ds):
        model = build_mlp(num_features, cfg.model)
    num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return engine, engine, {"num_params": num_params, "optimizer": type(inner).__name__, "ds_config": ds}


def train_step(
    engine: str, model: Any, opt: Any, x: torch.Tensor, y: torch.Tensor, snapshot: bool = False
) -> tuple[tuple[float, float, float], float, dict[str, Any] | None]:
    """One step: ((forward, backward, optimizer) seconds, loss, model-state snapshot or None).

    With `snapshot`, the model state is counted between backward and the optimizer step.
    """
    t0 = time.perf_counter()
    loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1).float(), y)
    t1 = time.perf_counter()
    if engine == "ddp":
        opt.zero_grad(set_to_none=False)
        loss.backward()
    else:
        model.backward(loss)
    t2 = time.perf_counter()
    state = None
    if snapshot:
        state = ddp_model_state(model, opt) if engine == "ddp" else zero_model_state(model)
    opt.step()
    loss_value = loss.item()
    t3 = time.perf_counter()
    return (t1 - t0, t2 - t1, t3 - t2), loss_value, state


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--engine", choices=("ddp", "deepspeed"), required=True)
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--offload", default="none")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--ds-overrides", default="{}", help="JSON deep-merged over deepspeed_config(...)")
    p.add_argument("--bucket-view", action="store_true", help="DDP gradient_as_bucket_view=True")
    p.add_argument("--fused-adamw", action="store_true", help="DDP torch.optim.AdamW(fused=True)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profile", action="store_true", help="cProfile the timed steps into <out>/profile-rank<N>.txt")
    p.add_argument("--local_rank", type=int, default=None, help="set by DeepSpeed's launcher")
    args = p.parse_args(argv)
    t_launch = time.perf_counter()
    if args.engine == "ddp":
        dist.init_process_group("gloo")
    else:
        import deepspeed

        deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    t_init = time.perf_counter()
    rss_start = current_rss()
    cfg = bench_config(args)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    x_np, y_np = make_builtin(NUM_ROWS, cfg.data.num_features, cfg.seed)
    x_all, y_all = torch.from_numpy(x_np).to(dtype), torch.from_numpy(y_np)
    del x_np, y_np
    order = epoch_order(torch.arange(NUM_ROWS).numpy(), cfg.seed, 0)
    batches_per_epoch = NUM_ROWS // cfg.global_batch_size

    torch.manual_seed(cfg.seed)
    t_data = time.perf_counter()
    model, opt, info = build_engine(args, cfg, cfg.data.num_features)
    t_built = time.perf_counter()
    rss_built = current_rss()

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = rank_batch(order, step % batches_per_epoch, cfg.global_batch_size, rank, world)
        return x_all[idx], y_all[idx]

    losses = [train_step(args.engine, model, opt, *batch(step))[1] for step in range(args.warmup)]
    t_warm = time.perf_counter()
    dist.barrier()
    profiler = cProfile.Profile() if args.profile else None
    faults_start, cpu_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, cpu_seconds()
    t_start = time.perf_counter()
    if profiler:
        profiler.enable()
    timed = [train_step(args.engine, model, opt, *batch(step)) for step in range(args.warmup, args.warmup + args.steps)]
    dist.barrier()
    elapsed = time.perf_counter() - t_start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start
    cpu = cpu_seconds() - cpu_start
    if profiler:
        profiler.disable()
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / f"profile-rank{rank}.txt", "w") as f:
            pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(60)
    _, loss, state = train_step(args.engine, model, opt, *batch(args.warmup + args.steps), snapshot=True)
    phases = [t[0] for t in timed]
    losses += [t[1] for t in timed] + [loss]
    result = {
        "rank": rank,
        "world_size": world,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "elapsed_s": elapsed,
        "steps": args.steps,
        "global_batch": cfg.global_batch_size,
        "phase_s": dict(zip(("forward", "backward", "step"), map(sum, zip(*phases, strict=True)), strict=True)),
        "step_s": [sum(p) for p in phases],
        "cpu_s_per_step": cpu / args.steps,
        "page_faults_per_step": faults / args.steps,
        "setup_s": {
            "init_distributed": t_init - t_launch,
            "data": t_data - t_init,
            "build": t_built - t_data,
            "warmup": t_warm - t_built,
        },
        "rss_start": rss_start,
        "rss_built": rss_built,
        "rss_end": current_rss(),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "model_state": state,
        "final_loss": loss,
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
