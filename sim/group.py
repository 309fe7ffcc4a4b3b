"""The simulated training group's controller: keeps the group at its desired size, as EC2 Auto
Scaling does.

    python -m sim.group DIR     # started by `sim.stack up` (its pid in sim.json), stopped by `down`

Every `INTERVAL_S` it reads `<DIR>/sim.json` under the stack's lock (`sim.nodes.update_sim`): when
the group has fewer nodes than `desired` (a node terminated: `sim.nodes.terminate_node`, a lost
spot instance, a test) and its `Launch` process is not suspended (`sim.nodes.suspend_processes`),
it launches replacements (`sim.nodes.add_training_node`: a new instance id, address and instance
store, booted up to its scratch). What it does goes to `<DIR>/group.log`, one line per launch:
`launched sim-node2 (10.231.7.13) for a group of 2 short by 1`. The stack's group launches a
replacement after EC2 reports the instance gone, seconds to a few minutes; here it is one interval.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sim.nodes import NodeBootError, add_training_node, read_sim_file, update_sim
from sim.transport import SIM_FILE

INTERVAL_S = 1.0
LOG = "group.log"


def shortfall(sim: dict[str, Any]) -> int:
    """Nodes the group should launch now: how many it is short of, 0 while `Launch` is suspended."""
    group = sim["trainer_group"]
    return 0 if "Launch" in group.get("suspended", []) else max(0, group["desired"] - len(sim["nodes"]))


def reconcile(sim: dict[str, Any], sim_dir: Path) -> list[str]:
    """Launch the nodes the group is short of, unless `Launch` is suspended; the lines to log."""
    group, short = sim["trainer_group"], shortfall(sim)
    if not short:
        return []
    lines = []
    for _ in range(short):
        try:
            iid = add_training_node(sim, sim_dir)
        except NodeBootError as e:  # terminated again; the next interval launches another
            lines.append(f"a launched node did not boot, terminated: {e}")
            continue
        lines.append(f"launched {iid} ({sim['nodes'][iid]['ip']}) for a group of {group['desired']} short by {short}")
    return lines


def run(sim_dir: Path, *, interval_s: float = INTERVAL_S) -> int:
    """The controller's loop, until the stack is taken down (its sim.json renamed by `down`)."""
    sim_dir = Path(sim_dir)
    with open(sim_dir / LOG, "a", buffering=1) as log:
        log.write(f"{time.strftime('%H:%M:%S')} controller of the simulated training group in {sim_dir}\n")
        while (sim_dir / SIM_FILE).is_file():
            try:
                # sim.json is rewritten (under the lock) only when there is something to launch
                short = shortfall(read_sim_file(sim_dir))
                lines = update_sim(sim_dir, lambda sim: reconcile(sim, sim_dir)) if short else []
            except Exception as e:  # noqa: BLE001 - a failed launch is logged and retried, as EC2 does
                lines = [f"launch failed, retrying: {e}"]
            for line in lines:
                log.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            time.sleep(interval_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.group", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="directory of the simulated stack")
    args = parser.parse_args(argv)
    return run(args.dir)


if __name__ == "__main__":
    sys.exit(main())
