"""`runtime.remote` (train on the stack's nodes via SSM) and `runtime.remote_sync` (checkpoints to S3).

AWS is the moto server on loopback (`aws_env`); the launcher runs as a real subprocess against it.
moto's SSM records each command (parameters included) and reports it `Success` at once, so the
node side is exercised by running `runtime.remote_sync` here on real checkpoint directories.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from runtime import remote_sync
from runtime.checkpoint import LATEST, MANIFEST, verify_checkpoint, write_manifest
from runtime.remote import report, wait_for_nodes
from runtime.remote_plan import (
    BUNDLE_KEY,
    TRAIN_OPTIONS,
    RemoteError,
    bundle_entries,
    encode_world_info,
    node_train_args,
    parse_outputs,
    write_bundle,
)
from runtime.remote_sync import SyncError, Uploader, sync_committed, sync_node_part
from runtime.train import build_parser as train_parser

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"


# --- pure pieces ------------------------------------------------------------------------------------


def test_world_info_is_what_deepspeed_encodes_and_launch_decodes():
    from collections import OrderedDict

    from deepspeed.launcher.runner import encode_world_info as ds_encode

    hosts = ["10.0.1.5", "10.0.1.6", "10.0.1.7", "~~~"]  # "~~~" makes base64 emit a url-safe "-"
    ours = encode_world_info(hosts, 4)
    assert "-" in ours
    assert ours == ds_encode(OrderedDict((h, list(range(4))) for h in hosts))
    # deepspeed.launcher.launch: urlsafe_b64decode, json.loads, node = keys[node_rank]
    decoded = json.loads(base64.urlsafe_b64decode(ours))
    assert list(decoded) == hosts
    assert decoded["10.0.1.7"] == [0, 1, 2, 3]


def outputs_dict(**over):
    base = {
        "region": REGION,
        "kms_key_arn": "arn:aws:kms:us-east-1:123456789012:key/k",
        "datasets_bucket": "ds",
        "checkpoints_bucket": "ck",
        "models_bucket": "md",
        "logs_bucket": "lg",
        "trainer_instance_ids": ["i-1", "i-2"],
        "trainer_private_ips": ["10.0.0.1", "10.0.0.2"],
        "trainer_slots_per_node": 2,
    }
    return {**base, **over}


def test_outputs_missing_or_malformed_name_the_output():
    out = parse_outputs(outputs_dict(), "f")
    assert (out.num_nodes, out.world_size, out.private_ips[0]) == (2, 4, "10.0.0.1")
    data = outputs_dict()
    del data["trainer_private_ips"], data["kms_key_arn"]
    with pytest.raises(RemoteError, match=r"kms_key_arn, trainer_private_ips.*pulumi up"):
        parse_outputs(data, "f")
    with pytest.raises(RemoteError, match="2 trainer_instance_ids but 1 trainer_private_ips"):
        parse_outputs(outputs_dict(trainer_private_ips=["10.0.0.1"]), "f")
    with pytest.raises(RemoteError, match="trainer_slots_per_node is 0"):
        parse_outputs(outputs_dict(trainer_slots_per_node=0), "f")


def test_bundle_is_deterministic_and_holds_runtime_and_requirements(tmp_path):
    root = tmp_path / "src"
    (root / "runtime" / "__pycache__").mkdir(parents=True)
    (root / "runtime" / "train.py").write_text("x = 1\n")
    (root / "runtime" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (root / "runtime" / ".hidden").write_text("no")
    (root / "requirements.txt").write_text("torch==2.13.0\n")
    (root / "infra").mkdir()
    (root / "infra" / "iam.py").write_text("no\n")
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    sha_a = write_bundle(bundle_entries(root), a)
    os.utime(root / "runtime" / "train.py", (1e9, 1e9))  # mtimes must not matter
    assert write_bundle(bundle_entries(root), b) == sha_a
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["requirements.txt", "runtime/train.py"]
        assert {(m.mtime, m.uid, m.mode) for m in members} == {(315532800, 0, 0o644)}
        assert tar.extractfile("runtime/train.py").read() == b"x = 1\n"
    (root / "runtime" / "link.py").symlink_to(root / "runtime" / "train.py")
    with pytest.raises(RemoteError, match="symlink"):
        bundle_entries(root)


def test_bundle_key_and_paths_are_the_ones_user_data_installs():
    from infra.userdata import APP_DIR, SCRATCH_MOUNT, bundle_uri
    from runtime.remote_plan import NODE_OUTPUT_DIR, NODE_PYTHON

    assert bundle_uri("md") == f"s3://md/{BUNDLE_KEY}"
    assert (f"{APP_DIR}/venv/bin/python", f"{SCRATCH_MOUNT}/runs") == (NODE_PYTHON, NODE_OUTPUT_DIR)


def test_node_args_cover_every_train_option():
    dests = {a.dest for a in train_parser()._actions}
    assert dests == set(TRAIN_OPTIONS), "a `runtime train` option is not handled by remote_plan.node_train_args"
    args = train_parser().parse_args(
        ["--preset", "mlp-large", "--nproc", "8", "--master-port", "1234", "--set", "epochs=2", "--data", "x.csv",
         "--config", "local.yaml", "--run-name", "r1", "--resume", "--dry-run"]
    )  # fmt: skip
    got = node_train_args(args, data="s3://ds/r1/x.csv", config_path="/scratch/runs/r1/c.yaml")
    assert got == [
        "--preset", "mlp-large", "--config", "/scratch/runs/r1/c.yaml", "--set", "epochs=2", "--run-name", "r1",
        "--data", "s3://ds/r1/x.csv", "--resume", "--set", "output_dir=/scratch/runs",
    ]  # fmt: skip


class ScriptedSsm:
    """Plays back get_command_invocation answers per instance (the poll loop's only call)."""

    def __init__(self, script: dict[str, list[dict]]):
        self.script = script

    def get_command_invocation(self, CommandId, InstanceId):  # noqa: N803 (boto3's names)
        steps = self.script[InstanceId]
        return {"InstanceId": InstanceId, **(steps.pop(0) if len(steps) > 1 else steps[0])}


def test_poll_prints_progress_and_failure_names_the_node():
    ssm = ScriptedSsm(
        {
            "i-a": [{"Status": "InProgress"}, {"Status": "Success", "ResponseCode": 0}],
            "i-b": [{"Status": "Pending"}, {"Status": "InProgress"},
                    {"Status": "Failed", "ResponseCode": 1, "StandardOutputContent": "boom\n"}],
        }
    )  # fmt: skip
    lines: list[str] = []
    results = wait_for_nodes(ssm, ["i-a", "i-b"], ["c1", "c2"], interval=0, sleep=lambda s: None, out=lines.append)
    assert "node0 i-a InProgress  node1 i-b Pending" in lines[0]
    assert "node0 i-a Success  node1 i-b Failed" in lines[-1]
    printed: list[str] = []
    assert report(results, run_name="r", out=printed.append) == 1
    assert any("node 1 (i-b): Failed" in p for p in printed) and "boom" in "\n".join(printed)
    preempted = [{"Status": "Success", "ResponseCode": 0}, {"Status": "Failed", "ResponseCode": 75}]
    assert report(preempted, run_name="r", out=lambda s: None) == 75
    assert report([{"Status": "Success", "ResponseCode": 0}], run_name="r", out=lambda s: None) == 0


# --- the stack, on the moto server -------------------------------------------------------------------


_AMI: dict[str, str] = {}


@pytest.fixture
def stack(aws_env, tmp_path):
    """A KMS key, the four buckets and two running instances; returns (outputs dict, outputs file)."""
    kms = boto3.client("kms", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    key_arn = kms.create_key(Description="stratus test")["KeyMetadata"]["Arn"]
    suffix = uuid.uuid4().hex[:8]
    buckets = {p: f"stratus-{p}-{suffix}" for p in ("datasets", "checkpoints", "models", "logs")}
    for b in buckets.values():
        s3.create_bucket(Bucket=b)
    if "image" not in _AMI:  # listing moto's ~1,300 images takes seconds; one is enough
        _AMI["image"] = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    image = _AMI["image"]
    instances = ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, InstanceType="g5.xlarge")["Instances"]
    outputs = {
        "region": REGION,
        "kms_key_arn": key_arn,
        **{f"{p}_bucket": b for p, b in buckets.items()},
        "trainer_instance_ids": [i["InstanceId"] for i in instances],
        "trainer_private_ips": [i["PrivateIpAddress"] for i in instances],
        "trainer_slots_per_node": 2,
    }
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return outputs, path


def run_remote(env, *args, timeout=60):
    cmd = [sys.executable, "-m", "runtime.remote", "--poll-interval", "0.05", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}
    )


def commands_of_run(run_name: str) -> list[dict]:
    """SSM commands this launcher sent for `run_name` (its Comment names the run and the node)."""
    ssm = boto3.client("ssm", region_name=REGION)
    return [c for c in ssm.list_commands()["Commands"] if c["Comment"].startswith(f"stratus {run_name} node ")]


def test_launch_uploads_bundle_and_data_and_sends_one_command_per_node(stack, aws_env, tmp_path):
    outputs, path = stack
    data = tmp_path / "train.csv"
    data.write_text("a,b,label\n" + "".join(f"{i % 7},{i % 3},{i % 2}\n" for i in range(200)))
    config = tmp_path / "override.yaml"
    config.write_text("epochs: 1\n")
    result = run_remote(aws_env, "--outputs-file", str(path), "--", "--set", "max_steps=2", "--data", str(data),
                        "--run-name", "csv1", "--config", str(config))  # fmt: skip
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
    assert {"requirements.txt", "runtime/train.py", "runtime/remote_sync.py"} <= set(names)
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
        assert launch.startswith("cd /opt/stratus/app && DS_ACCELERATOR=cuda /opt/stratus/venv/bin/python -m ")
        assert f"--node_rank={rank} " in launch and f"--master_addr={ips[0]} --master_port=29500" in launch
        world = launch.split("--world_info=")[1].split()[0]
        assert json.loads(base64.urlsafe_b64decode(world)) == {ip: [0, 1] for ip in ips}
        assert "--module runtime.train" in launch and "--set max_steps=2" in launch
        assert f"--data s3://{outputs['datasets_bucket']}/csv1/train.csv" in launch
        assert "--set output_dir=/scratch/runs" in launch and "--nproc" not in launch
        assert f"--bucket {outputs['checkpoints_bucket']} --prefix csv1/" in script
        assert f"--node-rank {rank} --num-nodes 2" in script
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
        "runtime/remote_sync.py" in result.stdout and f"s3://{outputs['models_bucket']}/{BUNDLE_KEY}" in result.stdout
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


# --- checkpoint sync (what node 0 and node k run after training) --------------------------------------


class Recorder:
    """A real S3 client that records each written key in order; can fail one key."""

    def __init__(self, s3, fail_key: str | None = None):
        self.s3, self.fail_key, self.keys = s3, fail_key, []

    def __getattr__(self, name):
        return getattr(self.s3, name)

    def _write(self, key):
        if key == self.fail_key:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "injected"}}, "PutObject")
        self.keys.append(key)

    def upload_file(self, src, bucket, key, ExtraArgs=None):  # noqa: N803
        self._write(key)
        return self.s3.upload_file(src, bucket, key, ExtraArgs=ExtraArgs)

    def put_object(self, **kwargs):
        self._write(kwargs["Key"])
        return self.s3.put_object(**kwargs)


def make_tag(ckpt_dir: Path, step: int, ranks: list[int], *, commit: bool, world: int = 2) -> Path:
    tag_dir = ckpt_dir / f"global_step{step}"
    (tag_dir / "rng").mkdir(parents=True)
    for r in ranks:
        (tag_dir / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(os.urandom(64) * (r + 1))
        (tag_dir / "rng" / f"rank{r}.json").write_text(json.dumps({"rank": r, "step": step}))
    if commit:
        (tag_dir / "mp_rank_00_model_states.pt").write_bytes(os.urandom(128))
        write_manifest(tag_dir, step=step, world_size=world, zero_stage=2, config_digest="d")
        (ckpt_dir / LATEST).write_text(tag_dir.name)
    return tag_dir


@pytest.fixture
def ckpt_bucket(aws_env):
    s3 = boto3.client("s3", region_name=REGION)
    key_arn = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    bucket = f"stratus-checkpoints-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return s3, bucket, key_arn


def download(s3, bucket: str, prefix: str, dest: Path) -> Path:
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        path = dest / obj["Key"][len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(path))
    return dest


def test_sync_uploads_in_commit_order_and_skips_uncommitted(ckpt_bucket, tmp_path):
    s3, bucket, key_arn = ckpt_bucket
    ckpt = tmp_path / "run" / "checkpoints"
    make_tag(ckpt, 2, [0, 1], commit=True)
    make_tag(ckpt, 4, [0, 1], commit=True)
    make_tag(ckpt, 6, [0, 1], commit=False)  # a crash mid-save: no manifest
    rec = Recorder(s3)
    assert sync_committed(Uploader(rec, bucket, "run/", key_arn), ckpt) == ["global_step2", "global_step4"]
    assert rec.keys[-1] == "run/latest"
    assert not any("global_step6" in k for k in rec.keys)
    for tag in ("global_step2", "global_step4"):
        mine = [i for i, k in enumerate(rec.keys) if k.startswith(f"run/{tag}/")]
        assert rec.keys[mine[-1]] == f"run/{tag}/{MANIFEST}" and len(mine) == 6  # 5 files, then the manifest
    assert rec.keys.index("run/global_step2/manifest.json") < min(
        i for i, k in enumerate(rec.keys) if k.startswith("run/global_step4/")
    )
    for key in rec.keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn), key
    assert s3.get_object(Bucket=bucket, Key="run/latest")["Body"].read() == b"global_step4"
    got = download(s3, bucket, "run/global_step4/", tmp_path / "dl")
    assert verify_checkpoint(got, world_size=2)["step"] == 4
    # a rerun uploads only the (small) manifests and `latest` again
    rec2 = Recorder(s3)
    sync_committed(Uploader(rec2, bucket, "run/", key_arn), ckpt)
    assert rec2.keys == ["run/global_step2/manifest.json", "run/global_step4/manifest.json", "run/latest"]


def test_sync_failure_before_manifest_leaves_latest_alone(ckpt_bucket, tmp_path):
    s3, bucket, key_arn = ckpt_bucket
    ckpt = tmp_path / "run" / "checkpoints"
    make_tag(ckpt, 2, [0, 1], commit=True)
    rec = Recorder(s3, fail_key="run/global_step2/manifest.json")
    with pytest.raises(ClientError):
        sync_committed(Uploader(rec, bucket, "run/", key_arn), ckpt)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "run/latest" not in keys and "run/global_step2/manifest.json" not in keys


def test_multi_node_sync_merges_every_nodes_shards(ckpt_bucket, tmp_path):
    s3, bucket, key_arn = ckpt_bucket
    node0, node1 = tmp_path / "n0" / "checkpoints", tmp_path / "n1" / "checkpoints"
    make_tag(node0, 3, [0, 1], commit=True, world=4)  # ranks 0,1 on node 0; manifest lists only those
    make_tag(node1, 3, [2, 3], commit=False)  # ranks 2,3 wrote to node 1's own disk
    up = Uploader(s3, bucket, "mn/", key_arn)
    with pytest.raises(SyncError, match=r"node\(s\) 1 did not upload"):
        sync_committed(up, node0, num_nodes=2, launch_id="L1", wait_s=0)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert "mn/latest" not in keys and "mn/global_step3/manifest.json" not in keys

    assert remote_sync.main(["--run-dir", str(node1.parent), "--bucket", bucket, "--prefix", "mn/",
                             "--kms-key-id", key_arn, "--node-rank", "1", "--num-nodes", "2",
                             "--launch-id", "L1"]) == 0  # fmt: skip
    assert remote_sync.main(["--run-dir", str(node0.parent), "--bucket", bucket, "--prefix", "mn/",
                             "--kms-key-id", key_arn, "--node-rank", "0", "--num-nodes", "2",
                             "--launch-id", "L1", "--wait-s", "0"]) == 0  # fmt: skip
    got = download(s3, bucket, "mn/global_step3/", tmp_path / "dl")
    manifest = verify_checkpoint(got, world_size=4)
    assert {f"rng/rank{r}.json" for r in range(4)} <= set(manifest["files"])
    assert s3.get_object(Bucket=bucket, Key="mn/latest")["Body"].read() == b"global_step3"
    # a part left by another launch is not merged
    assert sync_node_part(up, node1, node_rank=1, launch_id="L2") == ["global_step3"]
    s3.delete_object(Bucket=bucket, Key="mn/global_step3/manifest.json")
    with pytest.raises(SyncError, match="did not upload"):
        sync_committed(up, node0, num_nodes=2, launch_id="L3", wait_s=0)
