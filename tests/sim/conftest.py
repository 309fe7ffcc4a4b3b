"""One simulated stack per session (`sim.stack`), torn down whatever happens.

Names carry the `stsimt` prefix (tests only); leftovers of a killed session are removed first.
Every DeepSpeed launch here runs under the shared CPU lock file's holder (see RULES of the suite:
run this package with `flock /tmp/stratus-cpu.lock`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import sim.instance_store
import sim.netns
import sim.nodes
import sim.stack
from sim.transport import LocalTransport
from tests.runtime.conftest import run_train
from tests.sim.runs import E2E_SETS, launch_on

TEST_PREFIX = f"{sim.stack.PREFIX}t"
# The nodes run this interpreter (sim.stack), so they share its build cache of DeepSpeed's
# ops: on a fresh machine the one compile happens here, beside `up`, not on both nodes mid-launch.
BUILD_OPS = (
    "from deepspeed.accelerator import get_accelerator\n"
    "for name in ('CPUAdamBuilder', 'ShareMemCommBuilder'):\n"
    "    get_accelerator().create_op_builder(name).load()\n"
)


def _have_namespaces() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        return False
    probe = f"{TEST_PREFIX}probe"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return ok


def leftovers(sim_json: dict) -> list[str]:
    """Namespaces, links, live processes, mounts and loop devices of a simulated stack that still exist."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [n for n in sim_json["namespaces"] if n in names.split()]
    found += [f"link {sim_json['bridge']}"] if f" {sim_json['bridge']}:" in links else []
    found += [f"pid {p}" for p in sim_json["pids"] if Path(f"/proc/{p}").exists() and sim.netns.not_zombie(p)]
    sim_dir = Path(sim_json["bin"]).parent
    found += [f"mount {m}" for m in sim.instance_store.mounts_under(sim_dir)]
    found += [f"loop {d}" for d in sim.instance_store.loops_under(sim_dir)]
    return found


def remove_stale_instance_stores(tmp_path_factory) -> None:
    """Mounts and loop devices a killed earlier session left under pytest's temporary directories."""
    stale = tmp_path_factory.getbasetemp().parent
    assert not sim.instance_store.release(stale), f"could not release what is mounted under {stale}"


class SimStack:
    """A simulated stack's directory, outputs, description and boto3 clients for its emulator.

    The training nodes are a (simulated) Auto Scaling group whose members change when a test
    replaces one (`sim.nodes.replace_node`): look them up by rank (`node_ids`, `node_root`, `scratch`).
    """

    def __init__(self, root: Path, outputs: dict):
        self.root, self.outputs = root, outputs
        self.sim = json.loads((root / "sim.json").read_text())
        self.env = self.sim["env"]

    def client(self, service: str):
        return sim.stack.client(self.root, service)

    def node_ids(self) -> list[str]:
        """The training nodes now, by rank (what a launch discovers)."""
        group = LocalTransport(self.root).group_state(sim.nodes.TRAINER_GROUP)
        return [m.instance_id for m in group.members]

    def node_root(self, rank: int) -> Path:
        return self.root / self.node_ids()[rank]

    def scratch(self, rank: int) -> Path:
        return self.node_root(rank) / "scratch"


@pytest.fixture(scope="session")
def sim_stack(tmp_path_factory):
    if not _have_namespaces():
        pytest.skip("simulated nodes need root, iproute2 and util-linux (ip netns, unshare)")
    sim.netns.remove_leftovers(TEST_PREFIX)
    remove_stale_instance_stores(tmp_path_factory)
    root = tmp_path_factory.mktemp("sim")
    build = subprocess.Popen(
        [sys.executable, "-c", BUILD_OPS],
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        outputs = sim.stack.up(root, num_nodes=2, tag="t")
        built = build.communicate(timeout=900)[0]
        assert build.returncode == 0, f"building DeepSpeed's CPU ops failed:\n{built[-3000:]}"
        stack = SimStack(root, outputs)
        yield stack
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        described = json.loads((root / "sim.json").read_text()) if (root / "sim.json").is_file() else None
        sim.stack.down(root)
        if described:
            assert not leftovers(described), f"left behind: {leftovers(described)}"


@pytest.fixture(scope="session")
def e2e_pair(sim_stack, tmp_path_factory):
    """(the 2-node launch, the one-node 2-rank baseline's result, its output dir), trained side by side:
    both spend most of their wall time starting up and waiting on each other's ranks, not computing."""
    base_dir, box = tmp_path_factory.mktemp("e2e-base"), {}
    baseline = threading.Thread(target=lambda: box.setdefault("base", run_train(base_dir, "base", *E2E_SETS)))
    baseline.start()
    try:
        run = launch_on(sim_stack, "e2e", *E2E_SETS, remote=("--export",))  # node 0 publishes the model
    finally:
        baseline.join()  # run_train's own timeout bounds this
    return run, box["base"], base_dir


@pytest.fixture(scope="session")
def e2e_run(e2e_pair):
    return e2e_pair[0]
