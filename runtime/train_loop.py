"""The per-rank training loop, run by DeepSpeed's launcher through `runtime.train`."""

from __future__ import annotations

import math
import os
import random
import time
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from runtime import checkpoint
from runtime.config import ConfigError, TrainConfig, deepspeed_config, resolve_precision
from runtime.data import BUILTIN_BEST_ACCURACY, Dataset, epoch_order, load_dataset, rank_batch, steps_per_epoch
from runtime.log import get_logger
from runtime.metrics import MetricsLog, plot, write_summary
from runtime.models import build_mlp
from runtime.train_signals import install_rank_handlers, stop_requested

log = get_logger()
EVAL_BATCH = 1024
# A rank that dies (or hangs) makes every collective of the others fail after this long.
DIST_TIMEOUT_S = int(os.environ.get("STRATUS_DIST_TIMEOUT_S", "300"))


def _all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def evaluate(engine: Any, data: Dataset, device: str, dtype: torch.dtype) -> tuple[float, float]:
    """(mean BCE loss, accuracy) on the validation split; every rank runs the same batch count."""
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = np.array_split(data.val_idx, world)[rank]
    num_batches = math.ceil(math.ceil(len(data.val_idx) / world) / EVAL_BATCH)
    loss_sum = correct = 0.0
    engine.eval()
    with torch.no_grad():
        for b in range(num_batches):  # ZeRO-3 gathers parameters collectively: same count everywhere
            idx = shard[b * EVAL_BATCH : (b + 1) * EVAL_BATCH]
            x = torch.from_numpy(data.x[idx]).to(device=device, dtype=dtype)
            y = torch.from_numpy(data.y[idx]).to(device)
            logits = engine(x).squeeze(-1).float()
            loss_sum += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
            correct += ((logits > 0).float() == y).sum().item()
    engine.train()
    loss_sum, correct, count = _all_reduce_sum([loss_sum, correct, float(len(shard))])
    return loss_sum / count, correct / count


def partition_stats(engine: Any) -> tuple[int, list[int]]:
    """(total parameter count, elements each rank really holds). Under ZeRO-3 a rank holds a shard."""
    total = local = 0
    for p in engine.module.parameters():
        total += getattr(p, "ds_numel", p.numel())
        local += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
    held = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(held, torch.tensor([local], dtype=torch.int64))
    return total, [int(t.item()) for t in held]


def _agree_stop() -> bool:
    flag = torch.tensor([1 if stop_requested() else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def run(cfg: TrainConfig, *, resume: bool) -> int:
    """Train on this rank. Returns 0 when done, 75 when preempted after committing a checkpoint."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    install_rank_handlers()
    deepspeed.init_distributed(timeout=timedelta(seconds=DIST_TIMEOUT_S))
    rank, world = dist.get_rank(), dist.get_world_size()
    accel = get_accelerator()
    device = accel.device_name()
    kind = "cuda" if device == "cuda" else "cpu"
    if kind == "cuda":
        accel.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = f"cuda:{accel.current_device()}"
    ds_cfg = deepspeed_config(cfg, world_size=world, device=kind)
    precision = resolve_precision(cfg, kind)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    data = load_dataset(cfg.data, cfg.seed)
    ckpt_dir = cfg.run_dir / "checkpoints"
    if not resume and checkpoint.candidates(ckpt_dir):
        raise ConfigError(
            f"run {cfg.run_name!r} already has checkpoints in {ckpt_dir}; pass --resume or a new --run-name"
        )

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # Under ZeRO-3 every parameter is partitioned as it is created: no rank holds the whole model.
    with deepspeed.zero.Init(enabled=cfg.parallel.zero_stage == 3, config_dict_or_path=ds_cfg):
        model = build_mlp(data.num_features, cfg.model)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_cfg)

    step = epoch = step_in_epoch = 0
    if resume:
        try:
            state = checkpoint.restore(engine, ckpt_dir)
        except checkpoint.CheckpointError as e:
            log.error("cannot resume: %s", e)
            return 3
        step, epoch, step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        log.info("resumed %s at step %d (epoch %d, batch %d)", ckpt_dir, step, epoch, step_in_epoch)

    g = cfg.global_batch_size
    micro = cfg.micro_batch_size(world)
    accum = cfg.parallel.grad_accum_steps
    spe = steps_per_epoch(len(data.train_idx), g)
    if spe < 1:
        raise ConfigError(f"config `global_batch_size` = {g} exceeds the {len(data.train_idx)} training rows")
    total_steps = spe * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, spe * cfg.epochs)
    num_params, held = partition_stats(engine)
    if rank == 0:
        log.info(
            "model %s: %d parameters (held per rank: %s); ZeRO-%d, offload=%s, %s on %s x %d (%s)",
            cfg.preset,
            num_params,
            held,
            cfg.parallel.zero_stage,
            cfg.parallel.offload,
            precision,
            kind,
            world,
            dist.get_backend(),
        )
        log.info(
            "global batch %d = %d ranks x %d micro x %d accumulation; %d steps (%d/epoch)",
            g,
            world,
            micro,
            accum,
            total_steps,
            spe,
        )
    metrics = MetricsLog(cfg.run_dir / "metrics.csv", resume_step=step) if rank == 0 else None
    x_all, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    order = epoch_order(data.train_idx, cfg.seed, epoch)
    loss_sum, loss_steps = 0.0, 0
    t_start = t_last = time.perf_counter()
    samples_since = 0
    val_loss = val_acc = float("nan")
    last_tag = None

    def save() -> None:
        nonlocal last_tag
        state = {"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "samples_seen": step * g}
        tag_dir = checkpoint.commit(
            engine,
            ckpt_dir,
            step=step,
            state=state,
            config=cfg.to_dict(),
            config_digest=cfg.digest(),
            zero_stage=cfg.parallel.zero_stage,
        )
        last_tag = tag_dir.name
        if rank == 0:
            log.info("checkpoint %s committed", tag_dir)
            checkpoint.prune(ckpt_dir, cfg.keep_checkpoints, tag_dir)

    while step < total_steps:
        idx = rank_batch(order, step_in_epoch, g, rank, world)
        for a in range(accum):
            mb = idx[a * micro : (a + 1) * micro]
            logits = engine(x_all[mb].to(device=device, dtype=dtype)).squeeze(-1).float()
            loss = F.binary_cross_entropy_with_logits(logits, y_all[mb].to(device))
            engine.backward(loss)
            engine.step()
            loss_sum += loss.item() / accum
        loss_steps += 1
        samples_since += g
        step += 1
        step_in_epoch += 1
        end_of_epoch = step_in_epoch == spe
        if end_of_epoch:
            epoch, step_in_epoch = epoch + 1, 0
            order = epoch_order(data.train_idx, cfg.seed, epoch)
        stop = _agree_stop()
        last = step == total_steps
        do_eval = end_of_epoch or last or bool(cfg.eval_every and step % cfg.eval_every == 0)
        if do_eval or stop or last or step % cfg.log_every == 0:
            mean_loss = _all_reduce_sum([loss_sum])[0] / (world * loss_steps)
            loss_sum, loss_steps = 0.0, 0
            if do_eval:
                val_loss, val_acc = evaluate(engine, data, device, dtype)
            now = time.perf_counter()
            rate = samples_since / (now - t_last)
            t_last, samples_since = now, 0
            if rank == 0:
                extra = f" val_loss {val_loss:.4f} val_acc {100 * val_acc:.2f}%" if do_eval else ""
                log.info(
                    "step %d/%d epoch %d loss %.4f%s %.0f samples/s",
                    step,
                    total_steps,
                    epoch + (0 if end_of_epoch else 1),
                    mean_loss,
                    extra,
                    rate,
                )
                metrics.append(
                    step=step,
                    epoch=epoch,
                    loss=repr(mean_loss),
                    samples_per_s=f"{rate:.1f}",
                    val_loss=f"{val_loss:.6f}" if do_eval else "",
                    val_accuracy=f"{val_acc:.6f}" if do_eval else "",
                    elapsed_s=f"{now - t_start:.2f}",
                )
        if stop or last or step % cfg.checkpoint_every == 0:
            save()
        if stop:
            log.warning("stop requested (SIGTERM/SIGINT): checkpoint %s committed; rerun with --resume", last_tag)
            return 75

    if rank == 0:
        elapsed = time.perf_counter() - t_start
        summary: dict[str, Any] = {
            "preset": cfg.preset,
            "run_name": cfg.run_name,
            "world_size": world,
            "backend": dist.get_backend(),
            "device": kind,
            "zero_stage": cfg.parallel.zero_stage,
            "offload": cfg.parallel.offload,
            "precision": precision,
            "global_batch_size": g,
            "micro_batch_size": micro,
            "grad_accum_steps": accum,
            "num_parameters": num_params,
            "params_held_per_rank": held,
            "steps": step,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "elapsed_s": round(elapsed, 2),
            "checkpoint": last_tag,
            "data": cfg.data.source,
        }
        if cfg.data.source == "builtin:mlp-binary":
            summary["best_achievable_accuracy"] = BUILTIN_BEST_ACCURACY
        write_summary(cfg.run_dir / "summary.json", summary)
        plot(cfg.run_dir / "metrics.csv", cfg.run_dir / "training.png", f"{cfg.run_name} ({cfg.preset})")
        log.info(
            "done: %d steps, val accuracy %.2f%% (best achievable %s), %s",
            step,
            100 * val_acc,
            f"{100 * BUILTIN_BEST_ACCURACY:.1f}%" if "best_achievable_accuracy" in summary else "n/a",
            cfg.run_dir,
        )
    dist.barrier()
    return 0
