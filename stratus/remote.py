"""`stratus remote`: `runtime.remote.command` with the simulated nodes' transport for `--sim-dir`.

The runtime reaches nodes only through its `NodeTransport` interface and never imports the
simulator; the front door injects `sim.transport.LocalTransport` (the development package `sim/`,
which the runtime bundle does not carry), so `stratus remote --sim-dir DIR` runs each node's
script in a network namespace here. `python -m runtime remote --sim-dir` exits 2 and points here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runtime.remote import command
from runtime.remote.transport import NodeTransport


def local_transport(sim_dir: Path) -> NodeTransport:
    """The simulated nodes of `sim_dir`; imported only for `--sim-dir` (a launch to a real stack
    needs nothing of the development package).

    The launcher's own AWS calls (the bundle and data uploads, the checkpoint listing) then go to
    the simulated stack's emulator: its endpoint and credentials (`env` of sim.json) are put in
    this process's environment, as `aws configure` would for a real account. Variables already set
    are kept."""
    from sim.transport import LocalTransport

    transport = LocalTransport(sim_dir)
    for key, value in transport.sim.get("env", {}).items():
        if key.startswith("AWS_"):
            os.environ.setdefault(key, value)
    return transport


def main(argv: list[str] | None = None) -> int:
    """`runtime.remote.command.main` with the simulator's transport for `--sim-dir`."""
    return command.main(argv, sim_transport=local_transport)


if __name__ == "__main__":
    sys.exit(main())
