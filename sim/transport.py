"""The simulated nodes' transport: the launch's node scripts, run in Linux network namespaces here.

`LocalTransport` is the `runtime.remote.transport.NodeTransport` of a simulated stack
(`sim.stack up DIR`, `scripts/sim-stack.sh`): the same script lines SSM would run, started by `sh`
inside one network namespace per node, with the node's own scratch and app directories
bind-mounted at the host paths of `runtime.contract`. `stratus remote --sim-dir DIR` (the front
door, `stratus.remote`) builds it and hands it to `runtime.remote.command`; the runtime never
imports this package, and the runtime bundle does not carry it.

The training nodes are a simulated Auto Scaling group (`trainer_group` in sim.json, named by the
`trainer_autoscaling_group` output): `group_state` lists it as `runtime.remote.fleet` expects of
EC2's, a member in service being a node of sim.json whose namespace exists, ranked by its launch
counter (`sim.nodes.terminate_node`, `launch_node` and `replace_node` change the set).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.common.log import get_logger
from runtime.contract import APP_DIR, NODE_ENV_FILE, SCRATCH_MOUNT
from runtime.remote.fleet import GroupState, Member, ranked
from runtime.remote.outputs import RemoteError, StackOutputs
from runtime.remote.transport import OUTPUT_LIMIT, NodeTransport

SIM_FILE = "sim.json"
LOCK_FILE = ".sim.lock"
"""Held (exclusively) by `sim.nodes.update_sim` while it changes sim.json and the namespaces."""
log = get_logger()


def read_sim(sim_dir: Path) -> dict[str, Any]:
    """The simulated stack's description (`<sim_dir>/sim.json`, written by `sim.stack up`)."""
    try:
        return json.loads((Path(sim_dir) / SIM_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RemoteError(
            f"--sim-dir {sim_dir}: no readable {SIM_FILE} ({e}); create the simulated stack with "
            f"`scripts/sim-stack.sh up {sim_dir}`"
        ) from None


def namespaces() -> set[str]:
    """Names of the network namespaces that exist now."""
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def _tail_file(path: Path) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - OUTPUT_LIMIT))
        return f.read().decode("utf-8", "replace")


class LocalTransport(NodeTransport):
    """Simulated nodes: the script runs in the node's network namespace and mount namespace.

    Each node of `<sim_dir>/sim.json` names its network namespace, its address on the stack's
    bridge and its root directory, whose `scratch/`, `opt-stratus/`, `etc-stratus/` and `systemd/`
    are bind-mounted at `/scratch`, `/opt/stratus`, `/etc/stratus` and `/etc/systemd/system` for
    the script only (`unshare --mount`), so the node script runs unchanged. The serving hosts
    (`serving_hosts` in sim.json) are reachable the same way by their instance ids. The environment is the stack's
    (`env` in sim.json: the emulator endpoint and credentials, as an instance profile would give).
    """

    MOUNTS = (
        ("scratch", SCRATCH_MOUNT),
        ("opt-stratus", APP_DIR),
        ("etc-stratus", str(Path(NODE_ENV_FILE).parent)),
        ("systemd", "/etc/systemd/system"),
    )

    def __init__(self, sim_dir: Path):
        self.sim_dir = Path(sim_dir)
        self.sim = read_sim(self.sim_dir)
        self.procs: dict[str, tuple[subprocess.Popen, Path, float, int]] = {}

    def node(self, instance_id: str) -> dict[str, Any]:
        node = self.sim["nodes"].get(instance_id) or self.sim.get("serving_hosts", {}).get(instance_id)
        if node is None:  # launched since this transport read sim.json?
            self.sim = read_sim(self.sim_dir)
            node = self.sim["nodes"].get(instance_id) or self.sim.get("serving_hosts", {}).get(instance_id)
        if node is None:
            raise RemoteError(f"instance {instance_id} is not a node of the simulated stack in {self.sim_dir}")
        return node

    def group_state(self, name: str) -> GroupState:
        """The simulated training group now (sim.json re-read): members are nodes whose namespace exists."""
        # Shared lock: a node being terminated (its processes dying, then its namespace) is listed
        # either whole or gone, never half-way.
        with open(self.sim_dir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            self.sim = read_sim(self.sim_dir)
            alive = namespaces()
        group = self.sim.get("trainer_group")
        if not group or group["name"] != name:
            raise RemoteError(f"Auto Scaling group {name} does not exist in the simulated stack in {self.sim_dir}")
        members, waiting = [], []
        for iid, node in self.sim["nodes"].items():
            if node["netns"] in alive:
                members.append(Member(instance_id=iid, private_ip=node["ip"], launch_time=float(node["launched"])))
            else:
                waiting.append(f"{iid} terminated")
        return GroupState(name=name, desired=group["desired"], members=ranked(members), waiting=tuple(waiting))

    def check_nodes(self, outputs: StackOutputs) -> None:
        names = namespaces()
        for rank, (iid, ip) in enumerate(zip(outputs.instance_ids, outputs.private_ips, strict=True)):
            node = self.node(iid)
            if node["netns"] not in names:
                raise RemoteError(
                    f"node {rank}: namespace {node['netns']} of {iid} is gone; recreate the simulated stack with "
                    f"`scripts/sim-stack.sh down {self.sim_dir} && scripts/sim-stack.sh up {self.sim_dir}`"
                )
            if node["ip"] != ip:
                raise RemoteError(f"node {rank}: {iid} has address {node['ip']}, outputs say {ip}")

    def command_line(self, instance_id: str, script: Path, *, shell: str = "sh") -> list[str]:
        """`ip netns exec NS unshare --mount sh -c 'mount --bind ...; exec SHELL SCRIPT'`."""
        node = self.node(instance_id)
        root = Path(node["root"])
        binds = " && ".join(f"mkdir -p {target} && mount --bind {root / sub} {target}" for sub, target in self.MOUNTS)
        inner = f"{binds} && exec {shell} {script}"
        return [
            "ip",
            "netns",
            "exec",
            node["netns"],
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            inner,
        ]

    def send(self, instance_id: str, lines: Sequence[str], *, comment: str, timeout_s: int) -> str:
        node = self.node(instance_id)
        command_id = str(uuid.uuid4())
        work = Path(node["root"]) / "commands" / command_id
        work.mkdir(parents=True)
        script = work / "_script.sh"  # AWS-RunShellScript also runs the lines as one script file
        script.write_text("\n".join(lines) + "\n")
        env = {"PATH": f"{self.sim['bin']}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", **self.sim["env"]}
        with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
            proc = subprocess.Popen(
                self.command_line(instance_id, script),
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        self.procs[command_id] = (proc, work, time.monotonic(), timeout_s)
        log.info("simulated %s (%s): %s", instance_id, node["netns"], comment)
        return command_id

    def get_command_invocation(self, CommandId: str, InstanceId: str) -> dict[str, Any]:  # noqa: N803
        proc, work, start, timeout_s = self.procs[CommandId]
        code = proc.poll()
        if code is None and time.monotonic() - start > timeout_s:
            self.cancel(CommandId, InstanceId)
            code = proc.wait()
            status = detail = "TimedOut"
        elif code is None:
            status = detail = "InProgress"
        elif code == 0:
            status = detail = "Success"
        elif code < 0:  # killed by a signal: SSM says Failed with no code of its own
            status, detail, code = "Failed", "Failed", 128 - code
        else:
            status = detail = "Failed"
        result = {
            "InstanceId": InstanceId,
            "Status": status,
            "StatusDetails": detail,
            "StandardOutputContent": _tail_file(work / "stdout"),
            "StandardErrorContent": _tail_file(work / "stderr"),
        }
        if code is not None:
            result["ResponseCode"] = code
        return result

    def cancel(self, command_id: str, instance_id: str) -> None:
        proc = self.procs[command_id][0]
        if proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def describe(self, command_ids: Sequence[str]) -> str:
        return f"  outputs under {self.sim_dir}/<node>/commands/<id>/; stop everything: scripts/sim-stack.sh down"
