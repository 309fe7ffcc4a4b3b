"""DeepSpeed's CPU shared-memory all-reduce buffers in /dev/shm, and removing them.

DeepSpeed's shared-memory comm op (CPU, every rank on one host) creates a ~66 MiB POSIX
shared-memory segment per rank, `deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`,
and never unlinks it: each CPU run would leave them in /dev/shm (RAM) until reboot. Each rank
unlinks its own after training (`release_shm_buffer`); the local launch then removes those of
ranks that did not get there (killed by a signal, crashed: `release_launch_buffers`). No torch
import here: the launching process stays light.
"""

from __future__ import annotations

import os
from pathlib import Path

SHM_DIR = Path("/dev/shm")
LOCAL_ADDR = "127.0.0.1"
"""The MASTER_ADDR DeepSpeed's launcher gives the ranks of a one-host launch."""


def buffer_path(addr: str, port: int | str, rank: int | str, shm_dir: Path = SHM_DIR) -> Path:
    """The segment of `rank` in the launch rendezvousing at `addr:port`."""
    return shm_dir / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def release_shm_buffer(shm_dir: Path = SHM_DIR) -> Path | None:
    """Unlink this rank's segment (from MASTER_ADDR, MASTER_PORT, RANK); its path if one was removed.

    Every rank maps all the others' segments at start-up, so unlinking after training is safe:
    the mappings stay valid until the processes exit.
    """
    env = os.environ
    path = buffer_path(env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", ""), env.get("RANK", "0"), shm_dir)
    return path if _unlink(path) else None


def release_launch_buffers(port: int, world_size: int, addr: str = LOCAL_ADDR, shm_dir: Path = SHM_DIR) -> list[Path]:
    """After a local launch ended, however its ranks did: unlink the segments still there; the paths."""
    paths = [buffer_path(addr, port, rank, shm_dir) for rank in range(world_size)]
    return [path for path in paths if _unlink(path)]


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
