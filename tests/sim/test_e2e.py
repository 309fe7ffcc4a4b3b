"""`stratus remote --sim-dir`: the node scripts really run, two nodes rendezvous on node 0's address."""

from __future__ import annotations

import csv

import pytest

from runtime.remote.nodes import node_script
from runtime.remote.transport import SsmTransport
from tests.runtime.conftest import run_train
from tests.sim.runs import E2E_SETS, launch_on, node_scripts

# Same seed, data, global batch and per-rank slices: gloo sums two ranks' gradients whether the
# ranks share a machine or not, so the losses agree to float32 rounding of the reduction.
LOSS_TOLERANCE = 1e-5


def losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="session")
def e2e_run(sim_stack):
    return launch_on(sim_stack, "e2e", *E2E_SETS)


def test_two_simulated_nodes_train_like_one_node_with_two_ranks(sim_stack, e2e_run, tmp_path):
    assert e2e_run.code == 0
    log0 = (sim_stack.scratch(0) / "runs" / "e2e" / "node0.log").read_text()
    log1 = (sim_stack.scratch(1) / "runs" / "e2e" / "node1.log").read_text()
    ips = sim_stack.outputs["trainer_private_ips"]
    assert "node_rank=0" in log0 and "node_rank=1" in log1
    assert f"--master_addr={ips[0]}" in node_scripts(sim_stack, e2e_run.launch.sent_job.launch_id)[1]
    sim_losses = losses(sim_stack.scratch(0) / "runs" / "e2e")
    base = run_train(tmp_path, "base", *E2E_SETS)
    assert base.returncode == 0, base.stdout[-3000:] + base.stderr[-3000:]
    base_losses = losses(tmp_path / "base")
    assert len(sim_losses) == len(base_losses) == 8
    assert sim_losses == pytest.approx(base_losses, abs=LOSS_TOLERANCE)


def test_ssm_sends_the_script_the_simulated_nodes_ran(sim_stack, e2e_run):
    job = e2e_run.launch.sent_job
    ran = node_scripts(sim_stack, job.launch_id)
    assert set(ran) == {0, 1}
    ssm = sim_stack.client("ssm")
    transport = SsmTransport(ssm, sim_stack.client("ec2"), sim_stack.outputs["region"])
    for rank, iid in enumerate(sim_stack.outputs["trainer_instance_ids"]):
        command_id = transport.send(iid, node_script(job, rank), comment="compare", timeout_s=600)
        sent = ssm.list_commands(CommandId=command_id)["Commands"][0]["Parameters"]["commands"]
        assert "\n".join(sent) + "\n" == ran[rank]
