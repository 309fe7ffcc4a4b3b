"""Streaming beside training and the fetch before `--resume`, driven by a `NodeEnv`, against the
moto server on loopback (the full multi-node path runs on simulated nodes, tests/sim)."""

from __future__ import annotations

import json
import os
import uuid

import boto3
import pytest

from runtime.checkpoint.download import fetch_for_resume
from runtime.checkpoint.local import LATEST, candidates, verify_checkpoint, write_manifest
from runtime.checkpoint.s3 import S3Target
from runtime.checkpoint.stream import streamer_for
from runtime.common.nodeenv import NodeEnv
from runtime.contract import checkpoints_uri

REGION = "us-east-1"


def commit_tag(ckpt_dir, step):
    tag = ckpt_dir / f"global_step{step}"
    (tag / "rng").mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(os.urandom(256))
    (tag / "rng" / "rank0.json").write_text(json.dumps({"step": step}))
    write_manifest(tag, step=step, world_size=1, zero_stage=2, config_digest="d")
    (ckpt_dir / LATEST).write_text(tag.name)
    return tag


@pytest.fixture
def node_env(aws_env, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    s3 = boto3.client("s3", region_name=REGION)
    key_arn = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    bucket = f"stratus-checkpoints-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return s3, bucket, NodeEnv(checkpoint_uri=checkpoints_uri(bucket, "r1"), kms_key_arn=key_arn)


def test_nothing_streams_without_a_checkpoint_uri_or_off_local_rank_0(tmp_path, monkeypatch):
    assert streamer_for(2, NodeEnv()) is None and fetch_for_resume(tmp_path, NodeEnv()) is None
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert S3Target.for_this_process(NodeEnv(checkpoint_uri="s3://b/r/")) is None


def test_streamed_checkpoints_keep_the_newest_and_resume_on_empty_scratch(node_env, tmp_path):
    s3, bucket, env = node_env
    ckpt = tmp_path / "node" / "checkpoints"
    streamer = streamer_for(2, env)
    for step in (2, 4, 6):
        streamer.submit(commit_tag(ckpt, step))
    streamer.close()
    assert streamer.streamed == ["global_step2", "global_step4", "global_step6"]
    assert s3.get_object(Bucket=bucket, Key="r1/latest")["Body"].read() == b"global_step6"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="r1/")["Contents"]}
    assert not any(k.startswith("r1/global_step2/") for k in keys)  # retention: keep 2
    head = s3.head_object(Bucket=bucket, Key="r1/global_step6/manifest.json")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == env.kms_key_arn
    scratch = tmp_path / "empty" / "checkpoints"
    got = fetch_for_resume(scratch, env)
    assert got == scratch / "global_step6" and verify_checkpoint(got)["step"] == 6
    assert fetch_for_resume(scratch, env) is None  # nothing newer than what is here now
    assert [p.name for p in candidates(scratch)] == ["global_step6"]
