"""`sim.stack up --real-prepare`: the simulated prepare unit runs the node's prepare.sh (`sim.prepare`).

The real script builds a venv from a wheelhouse (minutes, see docs/operations.md for the timed
run); here a stand-in in its place records what it was started with, in the node's namespaces.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import sim.stack
from infra.builders.userdata import shipped_script
from runtime.contract import ENV_BUNDLE_URI, PREPARE_UNIT
from runtime.remote.nodes import OPS_ENV_LINE, NodeJob, node_script
from runtime.remote.outputs import parse_outputs
from sim import prepare, serve
from sim.transport import LocalTransport
from tests.runtime.remote.test_plan import outputs_dict
from tests.sim.conftest import _have_namespaces, leftovers

# What the stand-in records: its environment, the node's routes, what is mounted at /opt/stratus.
STAND_IN = """#!/bin/bash
env > /opt/stratus/seen.env
ip route > /opt/stratus/seen.routes
findmnt -n -o TARGET -T /opt/stratus > /opt/stratus/seen.mount
echo "stand-in prepare ran"
"""


def _run_on(transport: LocalTransport, iid: str, lines: list[str]) -> dict:
    command = transport.send(iid, lines, comment="prepare test", timeout_s=60)
    while (result := transport.get_command_invocation(command, iid))["Status"] == "InProgress":
        time.sleep(0.1)
    return result


def _env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_the_node_script_exports_the_ops_env_prepare_just_wrote():
    # A node's first prepare writes ops.env during the script: read before it only, the run would
    # not find the ops prepare built (TORCH_EXTENSIONS_DIR) and compile them again mid-run.
    outputs = parse_outputs(
        outputs_dict(trainer_instance_ids=["i-1"], trainer_private_ips=["10.0.0.1"], trainer_slots_per_node=1), "test"
    )
    job = NodeJob(outputs=outputs, run_name="r", train_args=(), bundle_sha256="0" * 64, launch_id="l")
    lines = node_script(job, 0)
    prepared = next(i for i, line in enumerate(lines) if f"systemctl restart {PREPARE_UNIT}" in line)
    trained = next(i for i, line in enumerate(lines) if "deepspeed.launcher.launch" in line)
    assert OPS_ENV_LINE in lines[prepared:trained]


def test_user_data_part_is_the_trainer_s_and_an_existing_one_is_kept(tmp_path):
    env = {"AWS_DEFAULT_REGION": "eu-west-1", ENV_BUNDLE_URI: "s3://models/runtime/bundle.tar.gz"}
    prepare.install_user_data_part(tmp_path / "etc", tmp_path / "app", env)
    assert (tmp_path / "app" / "prepare.sh").read_text() == shipped_script("prepare.sh")
    written = prepare.read_env_file(tmp_path / "etc" / "stack.env")
    assert written == {
        "AWS_REGION": "eu-west-1",
        ENV_BUNDLE_URI: "s3://models/runtime/bundle.tar.gz",
        "STRATUS_GPU": "0",
        "STRATUS_BUILD_OPS": "1",
        "STRATUS_SCRATCH": "nvme",
        "STRATUS_NVME_DISKS": "2",
    }
    (tmp_path / "app" / "prepare.sh").write_text(STAND_IN)
    (tmp_path / "etc" / "stack.env").write_text("AWS_REGION=us-west-2\n")
    prepare.install_user_data_part(tmp_path / "etc", tmp_path / "app", env)
    assert (tmp_path / "app" / "prepare.sh").read_text() == STAND_IN
    assert prepare.read_env_file(tmp_path / "etc" / "stack.env") == {"AWS_REGION": "us-west-2"}


def test_real_prepare_runs_the_node_s_prepare_sh_in_its_namespaces(tmp_path, capsys):
    if not _have_namespaces():
        pytest.skip("simulated nodes need root, iproute2 and util-linux (ip netns, unshare)")
    sim_dir = tmp_path / "sim"
    sim.stack.up(sim_dir, num_nodes=1, tag="t", real_prepare=True)
    described = json.loads((sim_dir / "sim.json").read_text())
    try:
        assert described["real_prepare"] is True and described["env"][prepare.ENV_REAL_PREPARE] == "1"
        app = sim_dir / "sim-node0" / "opt-stratus"
        (app / "prepare.sh").write_text(STAND_IN)  # in place of the user data's copy
        transport = LocalTransport(sim_dir)
        result = _run_on(transport, "sim-node0", [f"systemctl restart {PREPARE_UNIT}"])
        assert result["Status"] == "Success", result["StandardErrorContent"]
        assert "stand-in prepare" in result["StandardErrorContent"]
        seen = _env(app / "seen.env")
        # the trainer's stack.env (written as its user data would), the emulator, no pip config
        assert seen["AWS_REGION"] == "us-east-1" and seen[ENV_BUNDLE_URI] == described["env"][ENV_BUNDLE_URI]
        assert seen["STRATUS_BUILD_OPS"] == "1" and seen["STRATUS_GPU"] == "0"
        assert seen["AWS_ENDPOINT_URL"] == described["env"]["AWS_ENDPOINT_URL"]
        assert seen["PIP_CONFIG_FILE"] == "/dev/null" and not any(k.startswith("PIP_FIND") for k in seen)
        assert seen["PATH"].startswith("/usr/sbin:/usr/bin:")
        assert (sim_dir / "sim-node0" / "etc-stratus" / "stack.env").is_file()
        # the node's namespaces: only the bridge's subnet, no default route; its own /opt/stratus
        assert "default" not in (app / "seen.routes").read_text()
        assert (app / "seen.mount").read_text().strip() == "/opt/stratus"
        assert "stand-in prepare" in (app / "prepare.log").read_text()
        # a failure of prepare.sh fails the unit, hence the node command
        (app / "prepare.sh").write_text("#!/bin/bash\necho 'no wheel of x' >&2\nexit 78\n")
        failed = _run_on(transport, "sim-node0", [f"systemctl restart {PREPARE_UNIT}"])
        assert failed["Status"] == "Failed" and "no wheel of x" in failed["StandardErrorContent"]
        # its serving hosts would install offline too: `sim.serve` wants the wheelhouse
        assert serve.main([str(sim_dir)]) == 2
        assert "made with --real-prepare" in capsys.readouterr().err
        (tmp_path / "wheels").mkdir()
        (tmp_path / "wheels" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
        assert serve.main([str(sim_dir), "--wheels", str(tmp_path / "wheels")]) == 2  # one pin of many
        refused = capsys.readouterr().err
        assert "has no wheel of deepspeed==0.19.8, numpy==" in refused and "torch==" not in refused
        assert "nothing was uploaded" in refused
        models = json.loads((sim_dir / "outputs.json").read_text())["models_bucket"]
        assert "Contents" not in sim.stack.client(sim_dir, "s3").list_objects_v2(Bucket=models, Prefix="runtime/")
        assert described["serving_hosts"] == {} == sim.stack.read_sim_file(sim_dir)["serving_hosts"]
    finally:
        sim.stack.down(sim_dir)
    assert not leftovers(described)
