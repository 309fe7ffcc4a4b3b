"""Progress of a training run: log lines, the metrics CSV, and at the end the summary and plot.

Rank 0 writes; every rank takes part in the loss all-reduce, so `report` is collective. What is
specific to the model family (its metric, its throughput unit, its summary keys) the trainer's
task says (`runtime.train.families.spec.Task`).
"""

from __future__ import annotations

import time
from typing import Any

import torch.distributed as dist

from runtime.common.log import get_logger
from runtime.train.collectives import all_reduce_sum
from runtime.train.flops import mfu
from runtime.train.metrics import MetricsLog, plot, write_summary

log = get_logger()


class Progress:
    """Mean loss since the last report, throughput, and the latest validation result."""

    def __init__(self, trainer: Any, *, resume_step: int):
        """`trainer`: the `runtime.train.loop.Trainer` after `setup()` (and `resume()`)."""
        self.t = trainer
        run_dir = trainer.cfg.run_dir
        self.metrics = MetricsLog(run_dir / "metrics.csv", resume_step=resume_step) if trainer.rank == 0 else None
        self.loss_sum, self.loss_steps, self.samples_since = 0.0, 0, 0
        self.t_start = self.t_last = time.perf_counter()
        self.val_loss = self.val_metric = float("nan")
        self.flops_per_sample = trainer.task.flops_per_sample(trainer.num_params)
        self.rates: list[float] = []

    def announce(self) -> None:
        """Print the derived quantities once: parameters and shards, ZeRO setup, batch arithmetic."""
        t, cfg = self.t, self.t.cfg
        if t.rank != 0:
            return
        log.info(
            "model %s: %d parameters (held per rank: %s); ZeRO-%d, offload=%s, %s on %s x %d (%s)",
            cfg.preset,
            t.num_params,
            t.held,
            cfg.parallel.zero_stage,
            cfg.parallel.offload,
            t.precision,
            t.kind,
            t.world,
            dist.get_backend(),
        )
        log.info(
            "global batch %d = %d ranks x %d micro x %d accumulation; %d steps (%d/epoch)",
            cfg.global_batch_size,
            t.world,
            cfg.micro_batch_size(t.world),
            cfg.parallel.grad_accum_steps,
            t.total_steps,
            t.steps_per_epoch,
        )
        if line := t.task.announce_line(self.flops_per_sample):
            log.info("%s", line)
        log.info(
            "measured matmul peak %.1f GFLOP/s (%s, all %d ranks together): the MFU reference",
            t.peak_flops / 1e9,
            t.precision,
            t.world,
        )

    def add_loss(self, loss: float) -> None:
        self.loss_sum += loss
        self.loss_steps += 1
        self.samples_since += self.t.cfg.global_batch_size

    def report(self, *, evaluation: tuple[float, float] | None, end_of_epoch: bool) -> None:
        """Log a progress line and append a metrics row. Collective (the loss is averaged over ranks)."""
        t = self.t
        mean_loss = all_reduce_sum([self.loss_sum])[0] / (t.world * self.loss_steps)
        self.loss_sum, self.loss_steps = 0.0, 0
        if evaluation is not None:
            self.val_loss, self.val_metric = evaluation
        now = time.perf_counter()
        rate = self.samples_since / (now - self.t_last)
        self.t_last, self.samples_since = now, 0
        util = mfu(self.flops_per_sample, rate, t.peak_flops)
        self.rates.append(rate)
        if t.rank != 0:
            return
        self._log_line(mean_loss, evaluation is not None, end_of_epoch, rate, util)
        tokens = rate * t.task.tokens_per_sample
        metric = {t.task.metric_name: t.task.metric_csv(self.val_metric)} if evaluation else {}
        self.metrics.append(
            step=t.pos.step,
            epoch=t.pos.epoch,
            loss=repr(mean_loss),
            samples_per_s=f"{rate:.1f}",
            tokens_per_s=f"{tokens:.1f}" if t.task.tokens_per_sample else "",
            mfu=f"{util:.5f}",
            val_loss=f"{self.val_loss:.6f}" if evaluation else "",
            **metric,
            elapsed_s=f"{now - self.t_start:.2f}",
        )

    def _log_line(self, mean_loss: float, evaluated: bool, end_of_epoch: bool, rate: float, util: float) -> None:
        t = self.t
        extra = ""
        if evaluated:
            extra = f" val_loss {self.val_loss:.4f} {t.task.metric_text(self.val_metric)}"
        speed = t.task.speed_text(rate)
        log.info(
            "step %d/%d epoch %d loss %.4f%s %s MFU %.2f%%",
            t.pos.step,
            t.total_steps,
            t.pos.epoch + (0 if end_of_epoch else 1),
            mean_loss,
            extra,
            speed,
            100 * util,
        )

    def summary(self) -> dict[str, Any]:
        t, cfg = self.t, self.t.cfg
        return {
            "preset": cfg.preset,
            "run_name": cfg.run_name,
            "world_size": t.world,
            "backend": dist.get_backend(),
            "device": t.kind,
            "zero_stage": cfg.parallel.zero_stage,
            "offload": cfg.parallel.offload,
            "precision": t.precision,
            "global_batch_size": cfg.global_batch_size,
            "micro_batch_size": cfg.micro_batch_size(t.world),
            "grad_accum_steps": cfg.parallel.grad_accum_steps,
            "num_parameters": t.num_params,
            "params_held_per_rank": t.held,
            "steps": t.pos.step,
            "val_loss": self.val_loss,
            **t.task.summary_facts(self.val_metric, _median(self.rates)),
            "task": t.task.metric_name.removeprefix("val_"),
            "matmul_peak_flops": t.peak_flops,
            "flops_per_sample": self.flops_per_sample,
            "samples_per_s": _median(self.rates),
            "mfu": mfu(self.flops_per_sample, _median(self.rates), t.peak_flops),
            "elapsed_s": round(time.perf_counter() - self.t_start, 2),
            "checkpoint": t.last_tag,
            "data": cfg.data.source,
        }

    def finish(self) -> None:
        """Rank 0: write summary.json and training.png, and print the closing line."""
        cfg = self.t.cfg
        summary = self.summary()
        write_summary(cfg.run_dir / "summary.json", summary)
        plot(cfg.run_dir / "metrics.csv", cfg.run_dir / "training.png", f"{cfg.run_name} ({cfg.preset})")
        log.info("%s", self.t.task.done_line(self.t.pos.step, summary, cfg.run_dir))


def _median(values: list[float]) -> float:
    """Median of the reported rates (the first includes warm-up); 0 when none."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0
