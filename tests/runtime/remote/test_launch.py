"""`stratus remote` against the moto server on loopback (`aws_env`): the launcher runs as a real
subprocess; moto's SSM records each command (parameters included) and reports it `Success` at once.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3

from runtime.checkpoint.sync import SyncOptions
from runtime.common.nodeenv import NodeEnv
from runtime.common.options import parse_options
from runtime.contract import BUNDLE_KEY, checkpoints_uri
from runtime.remote.bundle import bundle_entries, write_bundle
from tests.runtime.remote.conftest import REGION

ROOT = Path(__file__).resolve().parents[3]


def run_remote(env, *args, timeout=60):
    cmd = [sys.executable, "-m", "runtime.remote", "--poll-interval", "0.05", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def commands_of_run(run_name: str) -> list[dict]:
    """SSM commands this launcher sent for `run_name` (its Comment names the run and the node)."""
    ssm = boto3.client("ssm", region_name=REGION)
    return [c for c in ssm.list_commands()["Commands"] if c["Comment"].startswith(f"stratus {run_name} node ")]


def check_sync_and_streaming(lines: list[str], outputs: dict, rank: int) -> None:
    """Node `rank`'s sync line and its launch's node knobs, in the script `lines` of run csv1."""
    # the sync line is SyncOptions' to_argv: it parses back into this node's options
    (sync,) = [shlex.split(x) for x in lines if "-m runtime.checkpoint.sync" in x]
    assert sync[:3] == ["/opt/stratus/venv/bin/python", "-m", "runtime.checkpoint.sync"]
    opts = parse_options(SyncOptions, sync[3:], prog="t")
    assert (opts.run_dir, opts.bucket, opts.prefix) == (
        Path("/scratch/runs/csv1"),
        outputs["checkpoints_bucket"],
        "csv1/",
    )
    assert (opts.kms_key_id, opts.node_rank, opts.num_nodes) == (outputs["kms_key_arn"], rank, 2) and opts.launch_id
    # the launch's node knobs (NodeEnv): where this node streams its checkpoints
    (exports,) = [x for x in lines if x.startswith("export STRATUS_")]
    env = NodeEnv.from_mapping(dict(w.split("=", 1) for w in shlex.split(exports)[1:]))
    assert env.checkpoint_uri == checkpoints_uri(outputs["checkpoints_bucket"], "csv1")
    assert (env.node_rank, env.num_nodes, env.launch_id) == (rank, 2, opts.launch_id)
    assert env.kms_key_arn == outputs["kms_key_arn"]


def test_launch_uploads_bundle_and_data_and_sends_one_command_per_node(stack, aws_env, tmp_path):
    outputs, path = stack
    data = tmp_path / "train.csv"
    data.write_text("a,b,label\n" + "".join(f"{i % 7},{i % 3},{i % 2}\n" for i in range(200)))
    config = tmp_path / "override.yaml"
    config.write_text("epochs: 1\n")
    result = run_remote(
        aws_env,
        "--outputs-file",
        str(path),
        "--",
        "--set",
        "max_steps=2",
        "--data",
        str(data),
        "--run-name",
        "csv1",
        "--config",
        str(config),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every node succeeded" in result.stdout

    s3 = boto3.client("s3", region_name=REGION)
    head = s3.head_object(Bucket=outputs["models_bucket"], Key=BUNDLE_KEY)
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", outputs["kms_key_arn"])
    bundle = tmp_path / "bundle.tar.gz"
    s3.download_file(outputs["models_bucket"], BUNDLE_KEY, str(bundle))
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert names == [e.name for e in bundle_entries(ROOT)]
    assert {"requirements/runtime.txt", "runtime/train/command.py", "runtime/checkpoint/sync.py"} <= set(names)
    assert not any("__pycache__" in n or n.startswith(("infra/", "tests/")) for n in names)
    head = s3.head_object(Bucket=outputs["datasets_bucket"], Key="csv1/train.csv")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", outputs["kms_key_arn"])

    ids, ips = outputs["trainer_instance_ids"], outputs["trainer_private_ips"]
    # moto records every EC2 instance on a command sent without Targets, so its InstanceIds cannot
    # tell the nodes apart; the launcher prints which command went to which instance.
    sent = re.findall(r"node (\d+) \((i-[0-9a-f]+)\): command ([0-9a-f-]+) sent", result.stdout)
    assert [(int(r), i) for r, i, _ in sent] == list(enumerate(ids))
    assert len(commands_of_run("csv1")) == 2
    ssm = boto3.client("ssm", region_name=REGION)
    by_node = {iid: ssm.list_commands(CommandId=cid)["Commands"][0] for _, iid, cid in sent}
    for rank, iid in enumerate(ids):
        cmd = by_node[iid]
        assert iid in cmd["InstanceIds"] and cmd["Comment"] == f"stratus csv1 node {rank}/2"
        assert cmd["DocumentName"] == "AWS-RunShellScript"
        script = "\n".join(cmd["Parameters"]["commands"])
        launch = next(line for line in cmd["Parameters"]["commands"] if "deepspeed.launcher.launch" in line)
        accel = 'DS_ACCELERATOR="${DS_ACCELERATOR:-cuda}"'  # node.env may name another (simulated nodes: cpu)
        assert launch.startswith(f"cd /opt/stratus/app && {accel} /opt/stratus/venv/bin/python -m ")
        assert f"--node_rank={rank} " in launch and f"--master_addr={ips[0]} --master_port=29500" in launch
        world = launch.split("--world_info=")[1].split()[0]
        assert json.loads(base64.urlsafe_b64decode(world)) == {ip: [0, 1] for ip in ips}
        assert "--module runtime.train" in launch and "--set max_steps=2" in launch
        assert f"--data s3://{outputs['datasets_bucket']}/csv1/train.csv" in launch
        assert "--set output_dir=/scratch/runs" in launch and "--nproc" not in launch
        assert f"--bucket {outputs['checkpoints_bucket']} --prefix csv1/" in script
        check_sync_and_streaming(cmd["Parameters"]["commands"], outputs, rank)
        # the operator's --config file is recreated on the node and passed there
        node_cfg = launch.split("--config ")[1].split()[0]
        assert node_cfg.startswith("/scratch/runs/csv1/config-") and node_cfg.endswith(".yaml")
        written = next(line for line in cmd["Parameters"]["commands"] if line.endswith(f"base64 -d > {node_cfg}"))
        assert base64.b64decode(written.split()[1]) == b"epochs: 1\n"
        assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0  # valid POSIX sh
        sha = write_bundle(bundle_entries(ROOT), tmp_path / f"again{rank}.tar.gz")
        assert f"{sha}  /opt/stratus/bundle.tar.gz" in script  # the node checks it runs this bundle


def test_dry_run_prints_everything_and_sends_nothing(stack, aws_env):
    outputs, path = stack
    result = run_remote(aws_env, "--outputs-file", str(path), "--dry-run", "--", "--run-name", "dry1")
    assert result.returncode == 0, result.stderr
    assert (
        "runtime/checkpoint/sync.py" in result.stdout
        and f"s3://{outputs['models_bucket']}/{BUNDLE_KEY}" in result.stdout
    )
    assert result.stdout.count("deepspeed.launcher.launch") == 2 and "--node_rank=1" in result.stdout
    assert commands_of_run("dry1") == []
    s3 = boto3.client("s3", region_name=REGION)
    assert s3.list_objects_v2(Bucket=outputs["models_bucket"])["KeyCount"] == 0


def test_unknown_instance_and_missing_output_are_clear_errors(stack, aws_env, tmp_path):
    outputs, _ = stack
    stale = tmp_path / "stale.json"
    stale.write_text(
        json.dumps({**outputs, "trainer_instance_ids": [outputs["trainer_instance_ids"][0], "i-0deadbeef0000000"]})
    )
    result = run_remote(aws_env, "--outputs-file", str(stale), "--", "--run-name", "stale1")
    assert result.returncode == 2
    assert "i-0deadbeef0000000 (trainer_instance_ids[1]) does not exist" in result.stdout
    assert "pulumi refresh" in result.stdout
    assert commands_of_run("stale1") == []

    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({k: v for k, v in outputs.items() if k != "trainer_slots_per_node"}))
    result = run_remote(aws_env, "--outputs-file", str(missing), "--", "--set", "max_steps=2")
    assert result.returncode == 2
    assert "trainer_slots_per_node" in result.stdout and "pulumi up" in result.stdout


def test_existing_run_needs_resume_and_bad_config_sends_nothing(stack, aws_env):
    outputs, path = stack
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=outputs["checkpoints_bucket"], Key="old/latest", Body=b"global_step2")
    result = run_remote(aws_env, "--outputs-file", str(path), "--", "--run-name", "old")
    assert result.returncode == 2 and "pass --resume" in result.stdout
    # 4 ranks (2 nodes x 2 GPUs) cannot split a global batch of 6
    result = run_remote(aws_env, "--outputs-file", str(path), "--", "--set", "global_batch_size=6", "--run-name", "b6")
    assert result.returncode == 2 and "global_batch_size" in result.stdout
    assert commands_of_run("old") == commands_of_run("b6") == []


def test_dry_run_with_export_prints_the_publish_command_of_node_0(stack, aws_env):
    outputs, path = stack
    result = run_remote(
        aws_env, "--outputs-file", str(path), "--dry-run", "--export", "--model-name", "m1", "--", "--run-name", "dry2"
    )
    assert result.returncode == 0, result.stderr
    plan = result.stdout.split(f"then node 0 ({outputs['trainer_instance_ids'][0]})", 1)[1]
    assert "-m runtime.remote.publish --run dry2" in plan and f"--models-bucket {outputs['models_bucket']}" in plan
    assert f"--kms-key-id {outputs['kms_key_arn']}" in plan and "--model-name m1" in plan
    assert commands_of_run("dry2") == []


def test_sim_dir_runs_through_the_front_door_only(stack, aws_env, tmp_path):
    """The simulator is not in the runtime: `python -m runtime.remote --sim-dir` exits 2 naming
    `stratus remote`, which injects the simulated nodes' transport and plans the same launch."""
    outputs, path = stack
    (tmp_path / "outputs.json").write_text(path.read_text())
    args = ("--sim-dir", str(tmp_path), "--dry-run", "--", "--run-name", "simdry")
    result = run_remote(aws_env, *args)
    assert result.returncode == 2 and "stratus remote --sim-dir DIR" in result.stdout + result.stderr
    cmd = [sys.executable, "-m", "stratus", "remote", "--poll-interval", "0.05", *args]
    front = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=aws_env)
    assert front.returncode == 0, front.stderr
    assert f"node 1 ({outputs['trainer_instance_ids'][1]}, " in front.stdout
