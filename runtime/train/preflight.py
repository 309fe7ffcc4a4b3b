"""All-reduce bandwidth check across every rank before the first step (NCCL on GPUs, gloo on CPU).

A slow or misconfigured interconnect (EFA off, the wrong interface, a node in another placement
group) shows here in seconds instead of as a slow run. The figure is the bus bandwidth of
nccl-tests: algorithm bandwidth (bytes / time) x 2(n-1)/n for an all-reduce over n ranks.
`NodeEnv.min_bus_gbps` (`STRATUS_MIN_BUS_GBPS`) sets a floor (GB/s; 0 or unset: only print it),
`NodeEnv.preflight_mib` the all-reduce's size (EFA types: 256 MiB, to measure the fabric). With
`NodeEnv.fabric` = `efa` on a GPU, the network NCCL picked is read back from its INIT,NET log
(`NCCL_DEBUG_FILE`, set by the node command): a fallback to sockets, or libfabric on another
provider than EFA, fails the run before the first step.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

from runtime.common.log import get_logger
from runtime.common.nodeenv import env_name
from runtime.train.config import ConfigError

log = get_logger()

ENV_FLOOR = env_name("min_bus_gbps")
DEFAULT_BYTES = 8 * 2**20
OFI_NETWORKS = ("aws libfabric", "libfabric", "ofi")
"""Names aws-ofi-nccl's network goes by (`NCCL_NET`; "AWS Libfabric" up to plugin 1.11)."""
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


def nccl_network(debug_log: str) -> tuple[str | None, str | None]:
    """(the network NCCL used, libfabric's provider) from NCCL's INIT,NET log lines; None if absent.

    NCCL says `Using network <name>` (`Socket`, `IB`, or a plugin's: `AWS Libfabric`); aws-ofi-nccl
    says `NET/OFI Selected provider is <name>` (`Selected Provider` in older versions).
    """
    networks = re.findall(r"Using network (\S.*?)\s*$", debug_log, flags=re.M)
    providers = re.findall(r"NET/OFI Selected [Pp]rovider is ([^\s,]+)", debug_log)
    return (networks[-1] if networks else None, providers[-1] if providers else None)


def check_fabric(debug_file_pattern: str) -> None:
    """Raise PreflightError unless this rank's NCCL log says aws-ofi-nccl over EFA.

    `debug_file_pattern` is `NCCL_DEBUG_FILE` (NCCL expands %h to the host name, %p to the pid).
    A missing log only warns: the check cannot tell, and `NCCL_NET` already stops a silent fallback.
    """
    path = Path(debug_file_pattern.replace("%h", socket.gethostname()).replace("%p", str(os.getpid())))
    if not debug_file_pattern or not path.is_file():
        log.warning("preflight: no NCCL log at %s (NCCL_DEBUG_FILE): the network NCCL picked is unchecked", path)
        return
    network, provider = nccl_network(path.read_text(errors="replace"))
    if network is None or network.lower() not in OFI_NETWORKS or (provider or "efa") != "efa":
        raise PreflightError(
            f"NCCL used network {network!r} (libfabric provider {provider!r}), not aws-ofi-nccl over EFA "
            f"(see {path}): check that LD_LIBRARY_PATH holds /opt/amazon/ofi-nccl/lib and `fi_info -p efa` "
            "lists the EFA devices; training over TCP sockets would run at a fraction of the speed; nothing was trained"
        )


def check(device: str, floor_gbps: float = 0.0, *, nbytes: int = DEFAULT_BYTES, fabric: str = "") -> float | None:
    """Measure, and raise PreflightError below `floor_gbps` (the trainer passes `NodeEnv.min_bus_gbps`,
    `preflight_mib` as `nbytes` and `fabric`); on `fabric` `efa` and a GPU, `check_fabric` too.

    Returns the bus bandwidth in GB/s, or None on a single rank (nothing to measure).
    """
    if dist.get_world_size() < 2:
        return None
    floor = floor_gbps
    gbps = bus_bandwidth(device, nbytes)
    if fabric == "efa" and device.startswith("cuda"):
        check_fabric(os.environ.get("NCCL_DEBUG_FILE", ""))
    if floor and gbps < floor:
        raise PreflightError(
            f"all-reduce bus bandwidth {gbps:.2f} GB/s across {dist.get_world_size()} ranks is below the floor of "
            f"{floor:g} GB/s ({ENV_FLOOR}): check the interconnect (EFA, NCCL_SOCKET_IFNAME, placement group) "
            f"or lower the floor; nothing was trained"
        )
    return gbps
