"""`stratus remote --sim-dir`: the node scripts really run, two nodes rendezvous on node 0's address."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from runtime.remote.nodes import node_script
from runtime.remote.transport import SsmTransport
from tests.sim.runs import E2E_SETS, launch_on, node_scripts

# Same seed, data, global batch and per-rank slices: gloo sums two ranks' gradients whether the
# ranks share a machine or not, so the losses agree to float32 rounding of the reduction.
LOSS_TOLERANCE = 1e-5


def losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_two_simulated_nodes_train_like_one_node_with_two_ranks(sim_stack, e2e_pair):
    e2e_run, base, base_dir = e2e_pair
    assert e2e_run.code == 0
    log0 = (sim_stack.scratch(0) / "runs" / "e2e" / "node0.log").read_text()
    log1 = (sim_stack.scratch(1) / "runs" / "e2e" / "node1.log").read_text()
    ips = e2e_run.launch.outputs.private_ips  # the group's members, discovered at launch
    assert "node_rank=0" in log0 and "node_rank=1" in log1
    assert "preflight: all-reduce bus bandwidth " in log0 and " GB/s across 2 ranks" in log0
    print(next(line for line in log0.splitlines() if "preflight:" in line))
    assert f"--master_addr={ips[0]}" in node_scripts(sim_stack, e2e_run.launch.sent_job.launch_id)[1]
    sim_losses = losses(sim_stack.scratch(0) / "runs" / "e2e")
    assert base.returncode == 0, base.stdout[-3000:] + base.stderr[-3000:]
    base_losses = losses(base_dir / "base")
    assert len(sim_losses) == len(base_losses) == 8
    assert sim_losses == pytest.approx(base_losses, abs=LOSS_TOLERANCE)


def test_ssm_sends_the_script_the_simulated_nodes_ran(sim_stack, e2e_run):
    job = e2e_run.launch.sent_job
    ran = node_scripts(sim_stack, job.launch_id)
    assert set(ran) == {0, 1}
    ssm = sim_stack.client("ssm")
    transport = SsmTransport(ssm, sim_stack.client("ec2"), sim_stack.outputs["region"])
    for rank, iid in enumerate(e2e_run.launch.outputs.instance_ids):
        command_id = transport.send(iid, node_script(job, rank), comment="compare", timeout_s=600)
        sent = ssm.list_commands(CommandId=command_id)["Commands"][0]["Parameters"]["commands"]
        assert "\n".join(sent) + "\n" == ran[rank]


def _manifest_times(s3, bucket: str, run: str) -> dict[int, object]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{run}/")["Contents"]
    return {
        int(o["Key"].split("/")[1][len("global_step") :]): o["LastModified"]
        for o in listed
        if o["Key"].endswith("/manifest.json") and "/.parts/" not in o["Key"]
    }


def test_checkpoints_stream_to_s3_during_training_in_commit_order(sim_stack, e2e_run):
    assert e2e_run.code == 0
    s3, bucket = sim_stack.client("s3"), sim_stack.outputs["checkpoints_bucket"]
    log0 = (sim_stack.scratch(0) / "runs" / "e2e" / "node0.log").read_text()
    # uploaded by the ranks themselves (the sync after training logs "synced", not "streamed"); node 0
    # streams a tag only once node 1's part arrived (node 1's ranks log only warnings)
    for step in (2, 4, 6, 8):
        assert f"streamed global_step{step} to s3://{bucket}/e2e/" in log0
    assert log0.index("streamed global_step2") < log0.index("done: 8 steps")
    times = _manifest_times(s3, bucket, "e2e")
    assert sorted(times) == [4, 6, 8]  # keep_checkpoints=3 applied to S3: global_step2 deleted
    assert times[4] <= times[6] <= times[8]
    assert not s3.list_objects_v2(Bucket=bucket, Prefix="e2e/global_step2/").get("Contents")
    latest = s3.get_object(Bucket=bucket, Key="e2e/latest")
    assert latest["Body"].read() == b"global_step8" and latest["LastModified"] >= times[8]
    head = s3.head_object(Bucket=bucket, Key="e2e/global_step8/manifest.json")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", sim_stack.outputs["kms_key_arn"])
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="e2e/global_step8/manifest.json")["Body"].read())
    assert {"rng/rank0.json", "rng/rank1.json"} <= set(manifest["files"]) and manifest["world_size"] == 2
    part = json.loads(s3.get_object(Bucket=bucket, Key="e2e/.parts/global_step8/node1.json")["Body"].read())
    assert part["launch_id"] == e2e_run.launch.sent_job.launch_id and "rng/rank1.json" in part["files"]


def test_resume_on_empty_scratch_downloads_and_skips_a_corrupt_s3_checkpoint(sim_stack, e2e_run):
    assert e2e_run.code == 0
    s3, bucket = sim_stack.client("s3"), sim_stack.outputs["checkpoints_bucket"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="e2e/global_step8/manifest.json")["Body"].read())
    shard = next(rel for rel in manifest["files"] if "optim_states" in rel)
    s3.put_object(
        Bucket=bucket,
        Key=f"e2e/global_step8/{shard}",
        Body=b"not a shard",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=sim_stack.outputs["kms_key_arn"],
    )
    for node in (0, 1):
        shutil.rmtree(sim_stack.scratch(node) / "runs" / "e2e")
    resumed = launch_on(sim_stack, "e2e", *E2E_SETS[1:], "max_steps=10", extra=("--resume",))
    assert resumed.code == 0
    log0 = (sim_stack.scratch(0) / "runs" / "e2e" / "node0.log").read_text()
    assert "skipping S3 checkpoint global_step8: " in log0 and shard in log0
    assert "resumed /scratch/runs/e2e/checkpoints at step 6" in log0
    assert "done: 10 steps" in log0
    assert s3.get_object(Bucket=bucket, Key="e2e/latest")["Body"].read() == b"global_step10"
