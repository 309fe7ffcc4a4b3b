"""The per-rank training loop as an object: `setup`, `resume`, `train_step`, `evaluate`, `save`, `fit`.

DeepSpeed's launcher starts one process per rank with `python -m runtime.train`; each builds a
`Trainer` and calls `fit()`. `bench/train_memory_throughput.py` drives the same object step by
step (`train_step(phases=..., before_step=...)`), so the benchmark measures the code users run.

    trainer = Trainer(cfg)
    trainer.setup()                # process group, data, model under ZeRO, DeepSpeed engine
    trainer.resume()               # optional: newest verified checkpoint (CheckpointError if none)
    code = trainer.fit()           # ExitCode.OK, or ExitCode.PREEMPTED after committing a checkpoint
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from runtime.checkpoint.commit import commit, restore
from runtime.checkpoint.download import fetch_for_resume
from runtime.checkpoint.local import CheckpointError, existing_run_problem, prune
from runtime.checkpoint.stream import CheckpointStreamer, streamer_for
from runtime.common.log import get_logger
from runtime.common.nodeenv import NodeEnv, node_env
from runtime.contract import ExitCode
from runtime.train import preflight
from runtime.train.collectives import all_reduce_sum, any_rank
from runtime.train.config import ConfigError, TrainConfig
from runtime.train.data import Dataset, check_batch_fits, epoch_order, rank_batch
from runtime.train.deepspeed_config import deepspeed_config, resolve_precision
from runtime.train.families import Task, family_of
from runtime.train.flops import measure_matmul_peak
from runtime.train.progress import Progress
from runtime.train.shm import release_shm_buffer
from runtime.train.signals import install_rank_handlers, stop_requested

log = get_logger()


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` merged in, recursively for nested dicts (neither is modified)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class Position:
    """Where training stands; saved in every checkpoint as `train_state.json`."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """Completed epochs."""
    step_in_epoch: int = 0
    """Optimizer steps taken in the current epoch."""


class Trainer:
    """One rank's share of a ZeRO data-parallel run.

    Args:
        cfg: the validated training config (the same on every rank).
        ds_overrides: DeepSpeed config keys merged over the generated config (benchmarks only).
        env: the node's knobs (process-group timeout, bandwidth floor, S3 streaming); default:
            this process's `node_env()`.
        task: what to train (data, model, loss, metric); None: the task of the config's model
            family (`runtime.train.families`).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        ds_overrides: dict[str, Any] | None = None,
        env: NodeEnv | None = None,
        task: Task | None = None,
    ):
        self.cfg = cfg
        self.env = node_env() if env is None else env
        self.task: Task = task if task is not None else family_of(cfg).task(cfg)
        self.ds_overrides = ds_overrides or {}
        self.pos = Position()
        self.ckpt_dir = cfg.run_dir / "checkpoints"
        self.last_tag: str | None = None
        self.streamer: CheckpointStreamer | None = None

    # --- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        """Join the process group, load the data, build the model under ZeRO and the engine.

        Raises:
            ConfigError, DataError: the batch does not fit the data, or the data is bad.
        """
        import deepspeed

        install_rank_handlers()
        # A rank that dies (or hangs) makes every collective of the others fail after this long.
        deepspeed.init_distributed(timeout=timedelta(seconds=self.env.dist_timeout_s))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.kind, self.device = self._device()
        self.ds_config = deep_merge(
            deepspeed_config(self.cfg, world_size=self.world, device=self.kind), self.ds_overrides
        )
        self.precision = resolve_precision(self.cfg, self.kind)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.data: Dataset = self.task.load_data()
        self.steps_per_epoch = check_batch_fits(self.cfg.global_batch_size, len(self.data.train_idx))
        full = self.steps_per_epoch * self.cfg.epochs
        self.total_steps = min(self.cfg.max_steps, full) if self.cfg.max_steps else full
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        # Under ZeRO-3 every parameter is partitioned as it is created: no rank holds the whole model
        # (a task that loads a pretrained model partitions it itself, as it loads).
        zero_init = self.cfg.parallel.zero_stage == 3 and not self.task.partitions_own_model
        with deepspeed.zero.Init(enabled=zero_init, config_dict_or_path=self.ds_config):
            model = self.task.build_model(self.data)
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=self.ds_config)
        self.x_all, self.y_all = torch.from_numpy(self.data.x), torch.from_numpy(self.data.y)
        self.order = epoch_order(self.data.train_idx, self.cfg.seed, 0)
        self.num_params, self.held = self.partition_stats()
        # Before the first step; PreflightError below the floor.
        env = self.env
        gbps = preflight.check(self.device, env.min_bus_gbps, nbytes=env.preflight_mib * 2**20, fabric=env.fabric)
        if gbps is not None and self.rank == 0:
            log.info("preflight: all-reduce bus bandwidth %.2f GB/s across %d ranks", gbps, self.world)
        # Every rank at once, as they will share the machine while training; summed over ranks.
        self.peak_flops = all_reduce_sum([measure_matmul_peak(self.dtype, self.device)])[0]
        # On a stack's node: S3 beside training.
        self.streamer = streamer_for(self.cfg.keep_checkpoints, self.env)

    def _device(self) -> tuple[str, str]:
        from deepspeed.accelerator import get_accelerator

        accel = get_accelerator()
        if accel.device_name() != "cuda":
            return "cpu", accel.device_name()
        accel.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return "cuda", f"cuda:{accel.current_device()}"

    def partition_stats(self) -> tuple[int, list[int]]:
        """(total parameters, elements each rank really holds). Under ZeRO-3 a rank holds a shard."""
        total = local = 0
        for p in self.engine.module.parameters():
            total += getattr(p, "ds_numel", p.numel())
            local += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
        held = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(held, torch.tensor([local], dtype=torch.int64))
        return total, [int(t.item()) for t in held]

    # --- checkpoints -----------------------------------------------------------------------------

    def resume(self) -> None:
        """Load the newest verified checkpoint of the run on every rank. Collective.

        Raises:
            CheckpointError: nothing verifies, or DeepSpeed cannot load it.
        """
        state = restore(self.engine, self.ckpt_dir)
        self.pos = Position(step=state["step"], epoch=state["epoch"], step_in_epoch=state["step_in_epoch"])
        self.order = epoch_order(self.data.train_idx, self.cfg.seed, self.pos.epoch)
        log.info(
            "resumed %s at step %d (epoch %d, batch %d)",
            self.ckpt_dir,
            self.pos.step,
            self.pos.epoch,
            self.pos.step_in_epoch,
        )

    def save(self) -> Path:
        """Commit a checkpoint of the current position on every rank, then apply retention. Collective."""
        state = {**vars(self.pos), "samples_seen": self.pos.step * self.cfg.global_batch_size}
        tag_dir = commit(
            self.engine,
            self.ckpt_dir,
            step=self.pos.step,
            state=state,
            config=self.cfg.to_dict(),
            config_digest=self.cfg.digest(),
            zero_stage=self.cfg.parallel.zero_stage,
            extra_files=self.task.checkpoint_files(),
        )
        self.last_tag = tag_dir.name
        if self.rank == 0:
            log.info("checkpoint %s committed", tag_dir)
        if self.streamer is not None:
            self.streamer.submit(tag_dir)
        if self.rank == 0:
            prune(self.ckpt_dir, self.cfg.keep_checkpoints, tag_dir)
        return tag_dir

    # --- steps -----------------------------------------------------------------------------------

    def train_step(
        self, *, phases: dict[str, float] | None = None, before_step: Callable[[], None] | None = None
    ) -> float:
        """One optimizer step on this rank's slice of the global batch; returns its mean loss.

        Args:
            phases: if given, forward/backward/step seconds are added to its keys (benchmarks).
            before_step: called once between the last backward and the optimizer step, the
                moment parameters, gradients and optimizer state all exist (benchmarks).
        """
        accum = self.cfg.parallel.grad_accum_steps
        micro = self.cfg.micro_batch_size(self.world)
        idx = rank_batch(self.order, self.pos.step_in_epoch, self.cfg.global_batch_size, self.rank, self.world)
        loss_sum = 0.0
        for a in range(accum):
            mb = idx[a * micro : (a + 1) * micro]
            t0 = time.perf_counter()
            loss = self.task.loss(self.engine, self.x_all[mb], self.y_all[mb], self.device, self.dtype)
            t1 = time.perf_counter()
            self.engine.backward(loss)
            t2 = time.perf_counter()
            if before_step is not None and a == accum - 1:
                before_step()
            self.engine.step()
            loss_sum += loss.item() / accum
            if phases is not None:
                t3 = time.perf_counter()
                for key, seconds in (("forward", t1 - t0), ("backward", t2 - t1), ("step", t3 - t2)):
                    phases[key] = phases.get(key, 0.0) + seconds
        self._advance()
        return loss_sum

    def _advance(self) -> None:
        self.pos.step += 1
        self.pos.step_in_epoch += 1
        if self.pos.step_in_epoch == self.steps_per_epoch:
            self.pos.epoch, self.pos.step_in_epoch = self.pos.epoch + 1, 0
            self.order = epoch_order(self.data.train_idx, self.cfg.seed, self.pos.epoch)

    def evaluate(self) -> tuple[float, float]:
        """(mean validation loss, the task's metric: accuracy or perplexity) over all ranks. Collective."""
        val_idx = self.task.val_indices(self.data)
        batch = self.task.eval_batch_size(self.cfg.micro_batch_size(self.world))
        shard = np.array_split(val_idx, self.world)[self.rank]
        num_batches = math.ceil(math.ceil(len(val_idx) / self.world) / batch)
        sums = [0.0, 0.0, 0.0]
        self.engine.eval()
        with torch.no_grad():
            for b in range(num_batches):  # ZeRO-3 gathers parameters collectively: same count everywhere
                idx = shard[b * batch : (b + 1) * batch]
                if len(idx) == 0:  # a short shard still joins the collective forward passes
                    idx = shard[:1] if len(shard) else val_idx[:1]
                    self.task.eval_sums(self.engine, self.x_all[idx], self.y_all[idx], self.device, self.dtype)
                    continue
                part = self.task.eval_sums(self.engine, self.x_all[idx], self.y_all[idx], self.device, self.dtype)
                sums = [a + b for a, b in zip(sums, part, strict=True)]
        self.engine.train()
        return self.task.finish_eval(*all_reduce_sum(sums))

    def stop_agreed(self) -> bool:
        """True on every rank once any rank got SIGTERM/SIGINT. Collective."""
        return any_rank(stop_requested())

    # --- the loop --------------------------------------------------------------------------------

    def fit(self) -> ExitCode:
        """Train to `total_steps` with progress lines, metrics, evaluation and checkpoints.

        Returns:
            ExitCode.OK when done; ExitCode.PREEMPTED after committing a checkpoint on a stop request.
        """
        cfg = self.cfg
        progress = Progress(self, resume_step=self.pos.step)
        progress.announce()
        while self.pos.step < self.total_steps:
            epoch_before = self.pos.epoch
            progress.add_loss(self.train_step())
            stop = self.stop_agreed()
            last = self.pos.step == self.total_steps
            end_of_epoch = self.pos.epoch != epoch_before
            do_eval = end_of_epoch or last or bool(cfg.eval_every and self.pos.step % cfg.eval_every == 0)
            if do_eval or stop or last or self.pos.step % cfg.log_every == 0:
                progress.report(evaluation=self.evaluate() if do_eval else None, end_of_epoch=end_of_epoch)
            if stop or last or self.pos.step % cfg.checkpoint_every == 0:
                self.save()
            if stop:
                log.warning(
                    "stop requested (SIGTERM/SIGINT): checkpoint %s committed; rerun with --resume", self.last_tag
                )
                return ExitCode.PREEMPTED
        if self.rank == 0:
            progress.finish()
        dist.barrier()
        return ExitCode.OK


def run(cfg: TrainConfig, *, resume: bool) -> ExitCode:
    """Train on this rank (the body of `python -m runtime.train` under DeepSpeed's launcher).

    Raises:
        ConfigError: the run already has checkpoints and `resume` is false.
    """
    if not resume and (problem := existing_run_problem(cfg.run_dir / "checkpoints", cfg.run_name)):
        raise ConfigError(problem)
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        code = _train(trainer, resume=resume)
    finally:
        release_shm_buffer()
    # Every rank reached here together: tear the process group down before the interpreter does.
    # Left to interpreter exit, a rank leaving while its peer is still in gloo can abort ("terminate
    # called without an active exception", signal 6), and the launch reports that, not `code`.
    dist.destroy_process_group()
    return code


def _train(trainer: Trainer, *, resume: bool) -> ExitCode:
    if resume:
        fetch_for_resume(trainer.ckpt_dir, trainer.env)  # a node with empty scratch: the newest S3 checkpoint
        dist.barrier()
        try:
            trainer.resume()
        except CheckpointError as e:
            log.error("cannot resume: %s", e)
            dist.barrier()  # every rank raised (restore agrees collectively); leave together
            return ExitCode.NO_CHECKPOINT
    code = trainer.fit()
    if trainer.streamer is not None:
        trainer.streamer.close()  # every committed checkpoint is in S3 before the exit code says so
    return code
