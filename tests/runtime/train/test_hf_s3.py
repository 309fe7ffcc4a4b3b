"""`stratus model push` to the emulated stack's datasets bucket, then training inputs read back
from `s3://`: the model directory downloaded and verified, the JSONL read."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from runtime.train.config import DataConfig
from runtime.train.hf import model as hf_model
from runtime.train.hf.data import load_jsonl_dataset
from runtime.train.hf.modeldir import MODEL_MANIFEST, ModelDirError, resolve_model_dir
from stratus.model import main as model_main
from tests.runtime.conftest import write_chat_jsonl


@pytest.fixture
def outputs_file(aws_env, tmp_path):
    """The stack outputs `stratus model push` reads: a datasets bucket and the stack's KMS key."""
    key_arn = boto3.client("kms").create_key(Description="stratus test")["KeyMetadata"]["Arn"]
    outputs = {"region": "us-east-1", "kms_key_arn": key_arn, "trainer_slots_per_node": 1}
    for purpose in ("datasets", "checkpoints", "models"):
        outputs[f"{purpose}_bucket"] = f"stratus-{purpose}-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=outputs[f"{purpose}_bucket"])
    outputs |= {"trainer_instance_ids": ["i-0"], "trainer_private_ips": ["10.0.0.1"]}
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return outputs, path


def test_push_uploads_with_sse_kms_and_training_loads_it_back(tiny_llama_dir, outputs_file, tmp_path, capsys):
    outputs, path = outputs_file
    bucket = outputs["datasets_bucket"]
    assert model_main(["push", str(tiny_llama_dir), "--outputs-file", str(path), "--prefix", "models/tiny"]) == 0
    uri = f"s3://{bucket}/models/tiny/"
    assert f"--model-dir {uri}" in capsys.readouterr().out
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="models/tiny/")["Contents"]]
    assert f"models/tiny/{MODEL_MANIFEST}" in keys and "models/tiny/model.safetensors" in keys
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", outputs["kms_key_arn"]), key

    meta = resolve_model_dir(uri, tmp_path / "cache", weights=False)  # what a launching machine fetches
    assert (meta / "tokenizer.json").is_file() and not (meta / "model.safetensors").exists()
    local = resolve_model_dir(uri, tmp_path / "cache")
    assert (local / "model.safetensors").read_bytes() == (tiny_llama_dir / "model.safetensors").read_bytes()
    assert resolve_model_dir(uri, tmp_path / "cache") == local  # the cached copy, verified again
    s3.upload_file(str(write_chat_jsonl(tmp_path / "chat.jsonl", 40)), bucket, "data/chat.jsonl")
    cfg = DataConfig(source=f"s3://{bucket}/data/chat.jsonl")
    data = load_jsonl_dataset(cfg, hf_model.load_tokenizer(local), seq_len=32, seed=0)
    assert len(data.train_idx) > 0 and len(data.val_idx) > 0

    s3.put_object(Bucket=bucket, Key="models/tiny/config.json", Body=b"{}")  # tampered after the push
    with pytest.raises(ModelDirError, match=r"config.json: does not match its sha256/size"):
        resolve_model_dir(uri, tmp_path / "fresh-cache")
    assert not any((tmp_path / "fresh-cache").iterdir())  # the refused copy is not left behind


def test_push_refuses_a_bad_directory_and_s3_needs_the_manifest(tiny_llama_dir, outputs_file, tmp_path, capsys):
    outputs, path = outputs_file
    assert model_main(["push", str(tmp_path), "--outputs-file", str(path)]) == 2
    assert "config.json: missing" in capsys.readouterr().err
    with pytest.raises(ModelDirError, match=r"stratus-model.json: cannot read it .* `stratus model push DIR`"):
        resolve_model_dir(f"s3://{outputs['datasets_bucket']}/nothing/", tmp_path / "cache")
