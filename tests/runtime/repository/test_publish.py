"""Publish: local and S3 (moto server on loopback, SSE-KMS), LATEST last, failures leave it alone."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import boto3
import pytest

import runtime.repository.publish as publish_mod
from runtime.contract import ExitCode
from runtime.repository.artifact import MANIFEST, ArtifactError, verify_artifact
from runtime.repository.command import main
from runtime.repository.publish import publish, read_latest
from runtime.repository.store import PublishError, open_repo
from tests.support import build_artifact


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    return build_artifact(tmp_path / "staged-a", seed=1)


@pytest.fixture
def staged_b(tmp_path: Path) -> Path:
    return build_artifact(tmp_path / "staged-b", seed=2)


class FailOnNthUpload:
    """Wraps a real repository store; the n-th `put_file` raises (an upload dying midway)."""

    def __init__(self, store, n: int):
        self.store, self.n, self.calls = store, n, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def put_file(self, key, src):
        self.calls += 1
        if self.calls == self.n:
            raise PublishError(f"injected failure uploading {key}")
        return self.store.put_file(key, src)


def inject(monkeypatch, wrapper_factory):
    real_open = publish_mod.open_repo
    holder = {}

    def fake_open(uri, **kwargs):
        holder["store"] = wrapper_factory(real_open(uri, **kwargs))
        return holder["store"]

    monkeypatch.setattr(publish_mod, "open_repo", fake_open)
    return holder


# --- local repository --------------------------------------------------------------------------


def test_local_publish_layout_and_versions(tmp_path: Path, staged: Path, staged_b: Path):
    repo = tmp_path / "repo"
    assert read_latest(str(repo), "tiny") is None
    assert publish(staged, str(repo), model_name="tiny") == 1
    assert publish(staged_b, str(repo), model_name="tiny") == 2
    assert (repo / "tiny" / "LATEST").read_text() == "2\n"
    assert read_latest(str(repo), "tiny") == 2
    for version, src in ((1, staged), (2, staged_b)):
        landed = repo / "tiny" / str(version)
        assert verify_artifact(landed) == json.loads((src / MANIFEST).read_text())
        assert (landed / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()
    pbtxt = (repo / "tiny" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in pbtxt and "dims: [ -1, 8 ]" in pbtxt


def test_local_version_follows_highest_existing(tmp_path: Path, staged: Path):
    repo = tmp_path / "repo"
    (repo / "tiny" / "7").mkdir(parents=True)  # e.g. a version kept after a rollback
    assert publish(staged, str(repo), model_name="tiny") == 8


def test_tampered_staged_artifact_is_not_published(tmp_path: Path, staged: Path):
    (staged / "notes.txt").write_text("extra")
    with pytest.raises(ArtifactError, match="notes.txt: extra file"):
        publish(staged, str(tmp_path / "repo"), model_name="tiny")
    assert not (tmp_path / "repo" / "tiny").exists()


def test_model_name_checks(tmp_path: Path, staged: Path):
    with pytest.raises(ValueError, match="exported as model 'tiny' but --model is 'other'"):
        publish(staged, str(tmp_path / "repo"), model_name="other")
    with pytest.raises(ValueError, match="model name '../x'"):
        publish(staged, str(tmp_path / "repo"), model_name="../x")


@pytest.mark.parametrize("fail_at", [1, 2])
def test_local_failure_midway_keeps_latest(monkeypatch, tmp_path: Path, staged: Path, staged_b: Path, fail_at):
    repo = tmp_path / "repo"
    publish(staged, str(repo), model_name="tiny")
    holder = inject(monkeypatch, lambda store: FailOnNthUpload(store, fail_at))
    with pytest.raises(PublishError, match="injected failure"):
        publish(staged_b, str(repo), model_name="tiny")
    assert holder["store"].calls == fail_at
    assert read_latest(str(repo), "tiny") == 1
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "LATEST", "config.pbtxt"]
    monkeypatch.undo()
    assert publish(staged_b, str(repo), model_name="tiny") == 2


def test_source_file_vanishing_midway_keeps_latest(monkeypatch, tmp_path: Path, staged: Path, staged_b: Path):
    repo = tmp_path / "repo"
    publish(staged, str(repo), model_name="tiny")

    class Vanish(FailOnNthUpload):
        def put_file(self, key, src):
            (staged_b / "model.onnx").unlink(missing_ok=True)  # deleted after verification
            return self.store.put_file(key, src)

    inject(monkeypatch, lambda store: Vanish(store, 0))
    with pytest.raises(PublishError, match="model.onnx"):
        publish(staged_b, str(repo), model_name="tiny")
    assert read_latest(str(repo), "tiny") == 1
    assert not (repo / "tiny" / "2").exists()


def test_landed_file_vanishing_is_detected(monkeypatch, tmp_path: Path, staged: Path, staged_b: Path):
    repo = tmp_path / "repo"
    publish(staged, str(repo), model_name="tiny")

    class LoseLanded(FailOnNthUpload):
        def put_file(self, key, src):
            self.store.put_file(key, src)
            if key.endswith(MANIFEST):
                (repo / key).with_name("model.onnx").unlink()

    inject(monkeypatch, lambda store: LoseLanded(store, 0))
    with pytest.raises(PublishError, match="model.onnx: missing after copy"):
        publish(staged_b, str(repo), model_name="tiny")
    assert read_latest(str(repo), "tiny") == 1


def test_cli_publish_and_errors(tmp_path: Path, staged: Path, capsys):
    repo = tmp_path / "repo"
    assert main(["--artifact", str(staged), "--repo", str(repo), "--model", "tiny"]) == 0
    assert "published tiny version 1" in capsys.readouterr().out
    assert main(["--artifact", str(tmp_path / "nope"), "--repo", str(repo), "--model", "tiny"]) == ExitCode.BAD_INPUT
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "LATEST" in capsys.readouterr().out


def test_malformed_latest_is_an_error(tmp_path: Path, staged: Path):
    repo = tmp_path / "repo"
    publish(staged, str(repo), model_name="tiny")
    (repo / "tiny" / "LATEST").write_text("two")
    with pytest.raises(PublishError, match="not a positive version number"):
        read_latest(str(repo), "tiny")


# --- S3 (moto server) --------------------------------------------------------------------------


@pytest.fixture
def s3_repo(aws_env):
    """A fresh bucket + KMS key on the emulator; yields (repo uri, key ARN, s3 client)."""
    key_arn = boto3.client("kms").create_key(Description="stratus test")["KeyMetadata"]["Arn"]
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/models", key_arn, s3


def _objects(s3, uri: str) -> dict[str, dict]:
    bucket, prefix = uri[5:].split("/", 1)
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1 :]: s3.head_object(Bucket=bucket, Key=o["Key"]) for o in listing}


def test_s3_publish_sse_kms_and_verify(s3_repo, staged: Path, staged_b: Path, tmp_path: Path):
    uri, key_arn, s3 = s3_repo
    assert publish(staged, uri, model_name="tiny", kms_key_id=key_arn) == 1
    assert publish(staged_b, uri, model_name="tiny", kms_key_id=key_arn) == 2
    objects = _objects(s3, uri)
    assert set(objects) == {
        "tiny/LATEST",
        "tiny/config.pbtxt",
        *(f"tiny/{v}/{f}" for v in (1, 2) for f in ("model.onnx", MANIFEST)),
    }
    for name, head in objects.items():
        assert head["ServerSideEncryption"] == "aws:kms", name
        assert head["SSEKMSKeyId"] == key_arn, name
    assert read_latest(uri, "tiny") == 2
    # what serve does: fetch into a local directory, then verify
    fetched = open_repo(uri).fetch_version("tiny", 2, tmp_path / "fetched")
    assert verify_artifact(fetched) == json.loads((staged_b / MANIFEST).read_text())


def test_s3_failure_on_second_upload_keeps_latest(monkeypatch, s3_repo, staged: Path, staged_b: Path):
    uri, key_arn, s3 = s3_repo
    publish(staged, uri, model_name="tiny", kms_key_id=key_arn)
    holder = inject(monkeypatch, lambda store: FailOnNthUpload(store, 2))
    with pytest.raises(PublishError, match="injected failure"):
        publish(staged_b, uri, model_name="tiny", kms_key_id=key_arn)
    assert holder["store"].calls == 2
    assert read_latest(uri, "tiny") == 1
    assert not [k for k in _objects(s3, uri) if k.startswith("tiny/2/")]


def test_s3_corrupted_landing_is_detected(monkeypatch, s3_repo, staged: Path, staged_b: Path):
    uri, key_arn, _ = s3_repo
    publish(staged, uri, model_name="tiny", kms_key_id=key_arn)

    class CorruptModel(FailOnNthUpload):
        def put_file(self, key, src):
            if key.endswith("model.onnx"):
                return self.store.put_bytes(key, Path(src).read_bytes()[:-1] + b"\0")
            return self.store.put_file(key, src)

    inject(monkeypatch, lambda store: CorruptModel(store, 0))
    with pytest.raises(PublishError, match="model.onnx: landed as"):
        publish(staged_b, uri, model_name="tiny", kms_key_id=key_arn)
    assert read_latest(uri, "tiny") == 1


def test_s3_wrong_encryption_is_detected(s3_repo, staged: Path):
    uri, key_arn, s3 = s3_repo
    store = open_repo(uri, kms_key_id=key_arn)
    data = (staged / "model.onnx").read_bytes()
    s3.put_object(Bucket=store.bucket, Key=store.key("tiny/9/model.onnx"), Body=data)  # no SSE-KMS
    with pytest.raises(PublishError, match="expected aws:kms"):
        store.verify_object("tiny/9/model.onnx", hashlib.sha256(data).hexdigest(), len(data))
