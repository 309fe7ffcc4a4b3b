"""`python -m runtime.checkpoint.sync` (what node 0 and node k run after training), on real checkpoint
directories against the moto server on loopback."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from runtime.checkpoint import sync as remote_sync
from runtime.checkpoint.local import LATEST, MANIFEST, verify_checkpoint, write_manifest
from runtime.checkpoint.s3 import SyncError, Uploader, sync_committed, sync_node_part

REGION = "us-east-1"

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


def _sync_cli(run_dir: Path, bucket: str, key_arn: str, **flags) -> int:
    """`python -m runtime.checkpoint.sync` of launch L1 of 2 nodes, run in process, as a node runs it."""
    flags = {
        "run_dir": run_dir,
        "bucket": bucket,
        "prefix": "mn/",
        "kms_key_id": key_arn,
        "num_nodes": 2,
        "launch_id": "L1",
        **flags,
    }
    return remote_sync.main([str(x) for name, value in flags.items() for x in (f"--{name.replace('_', '-')}", value)])


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

    assert _sync_cli(node1.parent, bucket, key_arn, node_rank=1) == 0
    assert _sync_cli(node0.parent, bucket, key_arn, node_rank=0, wait_s=0) == 0
    got = download(s3, bucket, "mn/global_step3/", tmp_path / "dl")
    manifest = verify_checkpoint(got, world_size=4)
    assert {f"rng/rank{r}.json" for r in range(4)} <= set(manifest["files"])
    assert s3.get_object(Bucket=bucket, Key="mn/latest")["Body"].read() == b"global_step3"
    # a part left by another launch is not merged
    assert sync_node_part(up, node1, node_rank=1, launch_id="L2") == ["global_step3"]
    s3.delete_object(Bucket=bucket, Key="mn/global_step3/manifest.json")
    with pytest.raises(SyncError, match="did not upload"):
        sync_committed(up, node0, num_nodes=2, launch_id="L3", wait_s=0)
