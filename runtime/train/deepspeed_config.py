"""The DeepSpeed config dict of a run, derived entirely from its `TrainConfig`.

ds = deepspeed_config(cfg, world_size=2, device="cpu")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.train.config import ConfigError, TrainConfig

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bf16 instruction sets this CPU advertises (from /proc/cpuinfo; empty when unknown)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [f for f in BF16_CPU_FLAGS if f in flags]


def resolve_precision(cfg: TrainConfig, device: str, cpuinfo: str | None = None) -> str:
    """`fp32` or `bf16` for this run. `auto` is bf16 on GPUs and fp32 on CPUs.

    Raises:
        ConfigError: bf16 asked for on a CPU without bf16 instructions, where it runs tens of
            times slower than fp32 (emulated conversions in every matmul).
    """
    if cfg.parallel.precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    if cfg.parallel.precision == "bf16" and device == "cpu" and not cpu_bf16_flags(cpuinfo):
        raise ConfigError(
            "config `parallel.precision` = 'bf16' is invalid on this CPU: it has no bf16 instructions "
            f"({' or '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo), so bf16 would run tens of times slower "
            "than fp32; use parallel.precision=fp32 (or auto) here and bf16 on GPUs"
        )
    return cfg.parallel.precision


def deepspeed_config(cfg: TrainConfig, *, world_size: int, device: str) -> dict[str, Any]:
    """The DeepSpeed config dict for this run, derived entirely from `cfg`.

    Args:
        world_size: number of data-parallel ranks.
        device: "cpu" or "cuda"; decides `auto` precision and the Adam implementation.
    """
    p = cfg.parallel
    micro = cfg.micro_batch_size(world_size)
    zero: dict[str, Any] = {"stage": p.zero_stage}
    if p.zero_stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=device == "cuda")
    if p.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device == "cuda"}
    if p.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": device == "cuda"}
    if p.zero_stage == 3:
        # Small models: gather every parameter on demand rather than persisting small ones whole
        # on every rank, so each rank really holds only its shard.
        zero["stage3_param_persistence_threshold"] = 0
    opt = cfg.optim
    ds: dict[str, Any] = {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": p.grad_accum_steps,
        "optimizer": {
            "type": "Adam",
            "params": {
                "lr": opt.lr,
                "betas": list(opt.betas),
                "eps": opt.eps,
                "weight_decay": opt.weight_decay,
                "adam_w_mode": False,
                # Without offload on CPU, torch's Adam avoids compiling a fused CPU kernel.
                "torch_adam": p.offload == "none" and device == "cpu",
            },
        },
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "Fail"},
    }
    if resolve_precision(cfg, device) == "bf16":
        ds["bf16"] = {"enabled": True}
    return ds
