"""All-reduce bandwidth check across every rank before the first step (NCCL on GPUs, gloo on CPU).

A slow or misconfigured interconnect (EFA off, the wrong interface, a node in another placement
group) shows here in seconds instead of as a slow run. The figure is the bus bandwidth of
nccl-tests: algorithm bandwidth (bytes / time) x 2(n-1)/n for an all-reduce over n ranks.
`NodeEnv.min_bus_gbps` (`STRATUS_MIN_BUS_GBPS`) sets a floor (GB/s; 0 or unset: only print it).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from runtime.common.nodeenv import env_name
from runtime.train.config import ConfigError

ENV_FLOOR = env_name("min_bus_gbps")
DEFAULT_BYTES = 8 * 2**20
ITERATIONS = 5


class PreflightError(ConfigError):
    """The measured bus bandwidth is below the configured floor (exit 2); the message has both."""


def bus_bandwidth(device: str, nbytes: int = DEFAULT_BYTES, iterations: int = ITERATIONS) -> float:
    """Bus bandwidth in GB/s of an fp32 all-reduce of `nbytes` over all ranks. Collective."""
    world = dist.get_world_size()
    tensor = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dist.all_reduce(tensor)  # warm-up: connections and buffers
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iterations):
        dist.all_reduce(tensor)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iterations
    # The slowest rank decides: every rank reports the same figure.
    slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return nbytes / slowest.item() * 2 * (world - 1) / world / 1e9


def check(device: str, floor_gbps: float = 0.0) -> float | None:
    """Measure, and raise PreflightError below `floor_gbps` (the trainer passes `NodeEnv.min_bus_gbps`).

    Returns the bus bandwidth in GB/s, or None on a single rank (nothing to measure).
    """
    if dist.get_world_size() < 2:
        return None
    floor = floor_gbps
    gbps = bus_bandwidth(device)
    if floor and gbps < floor:
        raise PreflightError(
            f"all-reduce bus bandwidth {gbps:.2f} GB/s across {dist.get_world_size()} ranks is below the floor of "
            f"{floor:g} GB/s ({ENV_FLOOR}): check the interconnect (EFA, NCCL_SOCKET_IFNAME, placement group) "
            f"or lower the floor; nothing was trained"
        )
    return gbps
