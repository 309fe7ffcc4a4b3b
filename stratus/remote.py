"""`stratus remote`: `runtime.remote.command` with the simulated nodes' transport for `--sim-dir`.

The runtime reaches nodes only through its `NodeTransport` interface and never imports the
simulator; the front door injects `sim.transport.LocalTransport` (the development package `sim/`,
which the runtime bundle does not carry), so `stratus remote --sim-dir DIR` runs each node's
script in a network namespace here. `python -m runtime remote --sim-dir` exits 2 and points here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runtime.remote import command
from runtime.remote.transport import NodeTransport


def local_transport(sim_dir: Path) -> NodeTransport:
    """The simulated nodes of `sim_dir`; imported only for `--sim-dir` (a launch to a real stack
    needs nothing of the development package)."""
    from sim.transport import LocalTransport

    return LocalTransport(sim_dir)


def main(argv: list[str] | None = None) -> int:
    """`runtime.remote.command.main` with the simulator's transport for `--sim-dir`."""
    return command.main(argv, sim_transport=local_transport)


if __name__ == "__main__":
    sys.exit(main())
