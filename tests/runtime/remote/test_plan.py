"""Pure pieces of `stratus remote`: stack outputs, the bundle, DeepSpeed world info, node
arguments, and the SSM poll loop (no AWS)."""

from __future__ import annotations

import base64
import json
import os
import tarfile

import pytest

from runtime.common.options import to_argv
from runtime.contract import APP_DIR, BUNDLE_KEY, HOST_PYTHON, NODE_OUTPUT_DIR, SCRATCH_MOUNT, ExitCode, bundle_uri
from runtime.remote.bundle import bundle_entries, write_bundle
from runtime.remote.nodes import encode_world_info, node_train_args
from runtime.remote.outputs import RemoteError, parse_outputs
from runtime.remote.progress import report, wait_for_nodes
from runtime.train.command import TrainOptions, parse_train_options

REGION = "us-east-1"


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
    (root / "requirements").mkdir()
    (root / "requirements" / "runtime.txt").write_text("torch==2.13.0\n")
    (root / "requirements" / "dev.txt").write_text("pytest==9.2.0\n")
    (root / "requirements.txt").write_text("-r requirements/runtime.txt\n-r requirements/dev.txt\n")
    (root / "infra").mkdir()
    (root / "infra" / "iam.py").write_text("no\n")
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    sha_a = write_bundle(bundle_entries(root), a)
    os.utime(root / "runtime" / "train.py", (1e9, 1e9))  # mtimes must not matter
    assert write_bundle(bundle_entries(root), b) == sha_a
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["requirements/runtime.txt", "runtime/train.py"]
        assert {(m.mtime, m.uid, m.mode) for m in members} == {(315532800, 0, 0o644)}
        assert tar.extractfile("runtime/train.py").read() == b"x = 1\n"
    (root / "runtime" / "link.py").symlink_to(root / "runtime" / "train.py")
    with pytest.raises(RemoteError, match="symlink"):
        bundle_entries(root)


def test_bundle_key_and_paths_are_the_ones_user_data_installs():
    assert bundle_uri("md") == f"s3://md/{BUNDLE_KEY}"
    assert (f"{APP_DIR}/venv/bin/python", f"{SCRATCH_MOUNT}/runs") == (HOST_PYTHON, NODE_OUTPUT_DIR)


def test_node_args_cover_every_train_option():
    args = parse_train_options(
        [
            "--preset",
            "mlp-large",
            "--nproc",
            "8",
            "--master-port",
            "1234",
            "--set",
            "epochs=2",
            "--data",
            "x.csv",
            "--config",
            "local.yaml",
            "--run-name",
            "r1",
            "--resume",
            "--dry-run",
        ]
    )
    got = node_train_args(args, data="s3://ds/r1/x.csv", config_path="/scratch/runs/r1/c.yaml")
    assert got == [
        "--preset",
        "mlp-large",
        "--config",
        "/scratch/runs/r1/c.yaml",
        "--set",
        "epochs=2",
        "--run-name",
        "r1",
        "--data",
        "s3://ds/r1/x.csv",
        "--resume",
        "--set",
        "output_dir=/scratch/runs",
    ]


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
            "i-b": [
                {"Status": "Pending"},
                {"Status": "InProgress"},
                {"Status": "Failed", "ResponseCode": 1, "StandardOutputContent": "boom\n"},
            ],
        }
    )
    lines: list[str] = []
    results = wait_for_nodes(ssm, ["i-a", "i-b"], ["c1", "c2"], interval=0, sleep=lambda s: None, out=lines.append)
    assert "node0 i-a InProgress  node1 i-b Pending" in lines[0]
    assert "node0 i-a Success  node1 i-b Failed" in lines[-1]
    printed: list[str] = []
    assert report(results, run_name="r", out=printed.append) == ExitCode.FAILED
    assert any("node 1 (i-b): Failed" in p for p in printed) and "boom" in "\n".join(printed)
    preempted = [{"Status": "Success", "ResponseCode": 0}, {"Status": "Failed", "ResponseCode": 75}]
    assert report(preempted, run_name="r", out=lambda s: None) == 75
    assert report([{"Status": "Success", "ResponseCode": 0}], run_name="r", out=lambda s: None) == 0


def test_node_args_parse_back_into_the_same_options_for_every_field():
    """An option added to TrainOptions reaches the nodes: the node command line parses back into it."""
    import dataclasses

    dropped = {"nproc", "master_port", "dry_run", "local_rank"}  # the world comes from --world_info
    values = {
        "preset": "mlp-large",
        "config": "c.yaml",
        "overrides": ("epochs=2", "seed=3"),
        "run_name": "r1",
        "data": "s3://ds/x.csv",
        "model_dir": "s3://ds/models/m/",
        "resume": True,
    }
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    assert fields == set(values) | dropped, "a new TrainOptions field needs a value in this test"
    opts = TrainOptions(**values, nproc=8, master_port=1234, dry_run=True)
    node = parse_train_options(node_train_args(opts, data=opts.data, config_path=opts.config))
    for name, value in values.items():
        want = (*value, f"output_dir={NODE_OUTPUT_DIR}") if name == "overrides" else value
        assert getattr(node, name) == want, name
    assert (node.nproc, node.master_port, node.dry_run) == (2, 0, False)
    assert to_argv(node)[:2] == ["--preset", "mlp-large"]
