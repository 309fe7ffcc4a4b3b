"""The simulated hosts' entries in sim.json and their root directories; the training nodes' group.

`sim.json` (written by `sim.stack.up`) describes every host: its network namespace, its address on
the bridge and its root directory (`node_root`: what `sim.transport.LocalTransport` bind-mounts at
the contract's host paths). Hosts boot side by side, so every change goes through `update_sim`
(an exclusive lock; `LocalTransport.group_state` reads under the shared one).

The training nodes are a simulated Auto Scaling group (`trainer_group` in sim.json, output
`trainer_autoscaling_group`): `terminate_node` is an instance's end (every process and the
namespace gone, its instance store released, the group one node short); `launch_node` is the
group's replacement, `sim-node<N>` with N counting up (never reused), a new address, namespace and
root, booted up to its scratch (`sim.instance_store`: new disks, the AMI's `dlami-nvme`, the
stack's `scratch.sh`). The group's controller (`sim.group`, started by `sim.stack up`) launches
the replacement when the group is short, as EC2 Auto Scaling does, unless its `Launch` process is
suspended (`suspend_processes`, as `aws autoscaling suspend-processes`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from sim import instance_store, netns
from sim.transport import LOCK_FILE, SIM_FILE

PREFIX = netns.PREFIX
TRAINER_GROUP = "sim-trainers"
"""The simulated training nodes' "Auto Scaling group": nodes are `sim-node<N>`, N counting up."""
TRAINER_HOSTS = (*range(10, 19), *range(40, 253))
"""Host numbers of the training nodes' addresses on the bridge subnet (indexes of its hosts; `sim.stack`
gives 0 to the bridge, 19 to the load balancer, 20-39 to serving hosts), the N-th launched node taking the N-th."""


def node_root(root: Path) -> None:
    """A host's root directory: what is bind-mounted at the contract's host paths (`sim.transport`)."""
    for sub in ("scratch", "opt-stratus", "etc-stratus", "systemd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # `/opt/stratus/venv/bin/python` execs this machine's interpreter by its own path, so the nodes
    # import DeepSpeed from the same files as this machine: torch's JIT builds of DeepSpeed's ops get
    # the same compiler command lines and share one build cache (TORCH_EXTENSIONS_DIR, else
    # ~/.cache/torch_extensions) instead of rebuilding each other's (a build dir has a file lock).
    venv = root / "opt-stratus" / "venv"
    if venv.is_symlink():  # a directory made by an older version linked the virtualenv itself
        venv.unlink()
    venv_bin = venv / "bin"
    venv_bin.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        (venv_bin / name).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (venv_bin / name).chmod(0o755)
    # The real node.env carries the instance type's NCCL/EFA settings; a simulated node is a CPU host.
    env = {"DS_ACCELERATOR": "cpu", "GLOO_SOCKET_IFNAME": "eth0"}
    if os.environ.get("TORCH_EXTENSIONS_DIR"):  # else torch's default under HOME (/root on the nodes)
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    (root / "etc-stratus" / "node.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def read_sim_file(sim_dir: Path) -> dict[str, Any]:
    """`<sim_dir>/sim.json`: the simulated stack's description."""
    return json.loads((Path(sim_dir) / SIM_FILE).read_text())


def update_sim(sim_dir: Path, change) -> Any:
    """Apply `change(sim)` to `<sim_dir>/sim.json` under a file lock (hosts boot side by side); its result."""
    import fcntl

    with open(Path(sim_dir) / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sim = json.loads((Path(sim_dir) / SIM_FILE).read_text())
        result = change(sim)
        tmp = Path(sim_dir) / f".{SIM_FILE}.tmp"
        tmp.write_text(json.dumps(sim, indent=1))
        tmp.replace(Path(sim_dir) / SIM_FILE)
        return result


def add_training_node(sim: dict[str, Any], sim_dir: Path) -> str:
    """`launch_node` on a sim.json being written (by `sim.stack.up`, or under `update_sim`'s lock)."""
    n = sim["trainer_group"]["launched"]
    net = ipaddress.IPv4Network(f"{sim['gateway']}/{sim['prefixlen']}", strict=False)
    ip = str(list(net.hosts())[TRAINER_HOSTS[n]])
    iid = f"sim-node{n}"
    node = {"netns": f"{PREFIX}{sim['suffix']}n{n}", "ip": ip, "root": str(Path(sim_dir) / iid), "launched": n}
    sim["trainer_group"]["launched"] = n + 1
    sim["nodes"][iid] = node
    netns.add_namespace(sim, node["netns"], ip, n)
    node_root(Path(node["root"]))
    try:
        node["boot"] = instance_store.boot(Path(node["root"]))
    except Exception as e:  # a node that did not boot is terminated (its id is not reused; its root stays)
        remove_training_node(sim, iid, abrupt=True)
        raise NodeBootError(str(e)) from e
    return iid


class NodeBootError(RuntimeError):
    """A launched training node did not boot (`sim.instance_store.boot` failed); it was terminated."""


def _launched(sim_dir: Path, change) -> str:
    """`update_sim(change)` for a change that launches a node: sim.json is written even when the
    node failed to boot (its id is used up, as EC2's would be), then the `NodeBootError` raised."""

    def guarded(sim: dict[str, Any]) -> tuple[str | None, NodeBootError | None]:
        try:
            return change(sim), None
        except NodeBootError as e:
            return None, e

    iid, error = update_sim(sim_dir, guarded)
    if error is not None:
        raise error
    return iid


def launch_node(sim_dir: Path) -> str:
    """A new training node, as the Auto Scaling group launches one: `sim-node<N>` (N never reused),
    the next address of `TRAINER_HOSTS`, its namespace and an empty root. Its id."""
    return _launched(sim_dir, lambda sim: add_training_node(sim, Path(sim_dir)))


def remove_training_node(sim: dict[str, Any], instance_id: str, *, abrupt: bool = False) -> None:
    """`terminate_node` on a sim.json being written (under `update_sim`'s lock)."""
    node = sim["nodes"].pop(instance_id)
    netns.remove_namespace(node["netns"], graceful=not abrupt)
    sim["namespaces"].remove(node["netns"])
    instance_store.release(Path(node["root"]))  # instance store does not outlive its instance


def terminate_node(sim_dir: Path, instance_id: str, *, abrupt: bool = False) -> None:
    """A training node's instance ends: every process in its namespace killed (SIGTERM first, as a
    shutdown does; `abrupt`: SIGKILL at once, a lost machine), the namespace, the instance store
    and the node's entry gone (its root directory stays for post-mortems); the group is one node
    short until its controller (`sim.group`) launches a replacement."""
    update_sim(sim_dir, lambda sim: remove_training_node(sim, instance_id, abrupt=abrupt))


def suspend_processes(sim_dir: Path, *processes: str) -> None:
    """Suspend the group's `processes` (`Launch`: the controller launches no replacement)."""

    def suspend(sim: dict[str, Any]) -> None:
        group = sim["trainer_group"]
        group["suspended"] = sorted({*group.get("suspended", []), *processes})

    update_sim(sim_dir, suspend)


def resume_processes(sim_dir: Path, *processes: str) -> None:
    """Resume the group's `processes` (`suspend_processes`)."""

    def resume(sim: dict[str, Any]) -> None:
        group = sim["trainer_group"]
        group["suspended"] = [p for p in group.get("suspended", []) if p not in processes]

    update_sim(sim_dir, resume)


def replace_node(sim_dir: Path, instance_id: str) -> str:
    """`terminate_node`, then `launch_node`, under one lock (the controller never sees the group
    short): what the group does for an unhealthy instance. The new id."""

    def replace(sim: dict[str, Any]) -> str:
        remove_training_node(sim, instance_id)
        return add_training_node(sim, Path(sim_dir))

    return _launched(sim_dir, replace)
