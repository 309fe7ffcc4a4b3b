"""The wheelhouse as its own content-addressed S3 object (`runtime.remote.wheelhouse`): the tar and
the bundle's manifest as pure functions, then `stratus remote --wheels` against the moto server:
uploaded by the first launch, left alone by the next ones with the same wheels.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

import boto3
import pytest

from runtime.contract import BUNDLE_KEY, WHEELHOUSE_PREFIX, WHEELS_MANIFEST, wheelhouse_key
from runtime.remote.bundle import BUNDLE_MTIME, bundle_entries, write_bundle
from runtime.remote.outputs import RemoteError
from runtime.remote.wheelhouse import read_wheelhouse, write_wheelhouse
from tests.infra.builders.sandbox import fake_package_wheel
from tests.runtime.remote.conftest import REGION
from tests.runtime.remote.test_launch import ROOT, run_remote
from tests.runtime.remote.test_wheels import wheelhouse_of_pins


def _two_wheels(dest):
    dest.mkdir()
    fake_package_wheel(dest, "six", "1.17.0", "six")
    fake_package_wheel(dest, "pyyaml", "6.0.3", "yaml")
    (dest / "notes.txt").write_text("not a wheel")
    return dest


def test_the_wheelhouse_is_a_deterministic_plain_tar_named_by_its_sha256(tmp_path):
    house = read_wheelhouse(_two_wheels(tmp_path / "w"))
    assert house.key == f"{WHEELHOUSE_PREFIX}{house.sha256}.tar" == wheelhouse_key(house.sha256)
    assert house.key.startswith("runtime/")  # the hosts' read of the runtime prefix covers it
    tar = tmp_path / "house.tar"
    write_wheelhouse(house, tar)
    data = tar.read_bytes()
    assert hashlib.sha256(data).hexdigest() == house.sha256 and len(data) == house.size
    assert data[:2] != b"\x1f\x8b"  # plain tar: wheels are compressed already
    with tarfile.open(tar, mode="r:") as t:
        members = t.getmembers()
    assert [m.name for m in members] == ["pyyaml-6.0.3-py3-none-any.whl", "six-1.17.0-py3-none-any.whl"]
    assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {(BUNDLE_MTIME, 0, 0, 0o644)}
    # mtimes do not matter; content does
    os.utime(tmp_path / "w" / "six-1.17.0-py3-none-any.whl", (1e9, 1e9))
    assert read_wheelhouse(tmp_path / "w").sha256 == house.sha256
    fake_package_wheel(tmp_path / "w", "idna", "3.10", "idna")
    assert read_wheelhouse(tmp_path / "w").sha256 != house.sha256
    # a wheel rewritten or removed after the directory was read: the tar would not match its key
    six = tmp_path / "w" / "six-1.17.0-py3-none-any.whl"
    six.write_bytes(six.read_bytes()[::-1])
    with pytest.raises(RemoteError, match="changed during the launch"):
        write_wheelhouse(house, tmp_path / "stale.tar")
    six.unlink()
    with pytest.raises(RemoteError, match="changed during the launch"):
        write_wheelhouse(house, tmp_path / "stale.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RemoteError, match="no .whl files there"):
        read_wheelhouse(tmp_path / "empty")
    with pytest.raises(ValueError, match="sha256 hex digest"):
        wheelhouse_key("../x")


def test_the_bundle_carries_the_wheelhouse_manifest_and_no_wheel(tmp_path):
    house = read_wheelhouse(_two_wheels(tmp_path / "w"))
    bundle, again = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    sha = write_bundle(bundle_entries(ROOT, house.manifest("md")), bundle)
    assert write_bundle(bundle_entries(ROOT, house.manifest("md")), again) == sha  # deterministic
    with tarfile.open(bundle) as t:
        names = t.getnames()
        manifest = json.loads(t.extractfile(WHEELS_MANIFEST).read())
    assert not [n for n in names if n.endswith(".whl")]
    assert manifest == {
        "uri": f"s3://md/{house.key}",
        "sha256": house.sha256,
        "size": house.size,
        "wheels": ["pyyaml-6.0.3-py3-none-any.whl", "six-1.17.0-py3-none-any.whl"],
    }
    # the bundle's hash (which each node checks) still follows the wheelhouse
    without = write_bundle(bundle_entries(ROOT), tmp_path / "c.tar.gz")
    fake_package_wheel(tmp_path / "w", "idna", "3.10", "idna")
    other = read_wheelhouse(tmp_path / "w").manifest("md")
    assert len({sha, without, write_bundle(bundle_entries(ROOT, other), tmp_path / "d.tar.gz")}) == 3


def _launch(aws_env, path, house, run_name):
    args = ("--outputs-file", str(path), "--wheels", str(house), "--", "--set", "max_steps=2")
    result = run_remote(aws_env, *args, "--run-name", run_name)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_relaunch_with_the_same_wheels_uploads_no_wheelhouse(stack, aws_env, tmp_path):
    outputs, path = stack
    bucket, key_arn = outputs["models_bucket"], outputs["kms_key_arn"]
    house = wheelhouse_of_pins(tmp_path / "wheels")
    key = read_wheelhouse(house).key
    uri = f"s3://{bucket}/{key}"
    s3 = boto3.client("s3", region_name=REGION)

    first = _launch(aws_env, path, house, "wh1")
    assert "uploaded the wheelhouse (" in first and f") to {uri}" in first
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == sorted([BUNDLE_KEY, key])
    head = s3.head_object(Bucket=bucket, Key=key)
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == key.removeprefix(WHEELHOUSE_PREFIX).removesuffix(".tar")
    s3.download_file(bucket, BUNDLE_KEY, str(tmp_path / "bundle.tar.gz"))
    with tarfile.open(tmp_path / "bundle.tar.gz") as t:
        assert json.loads(t.extractfile(WHEELS_MANIFEST).read())["uri"] == uri
        assert not [n for n in t.getnames() if n.endswith(".whl")]
    # mark the object launch 1 left: a re-upload would replace it (and drop the mark)
    s3.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        Metadata={"left-by": "wh1"},
        MetadataDirective="REPLACE",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=key_arn,
    )
    marked = s3.head_object(Bucket=bucket, Key=key)

    plan = run_remote(
        aws_env, "--outputs-file", str(path), "--wheels", str(house), "--dry-run", "--", "--run-name", "p"
    )
    assert f"  wheelhouse   {uri}  (" in plan.stdout and "; already there: not uploaded)" in plan.stdout

    second = _launch(aws_env, path, house, "wh2")
    assert f"wheelhouse already in {uri} (" in second and "uploaded the wheelhouse" not in second
    again = s3.head_object(Bucket=bucket, Key=key)
    assert again["Metadata"] == {"left-by": "wh1"}
    assert (again["ETag"], again["LastModified"]) == (marked["ETag"], marked["LastModified"])
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == sorted([BUNDLE_KEY, key])

    # an object of another size at that key (a partial copy): uploaded again
    s3.put_object(Bucket=bucket, Key=key, Body=b"partial")
    third = _launch(aws_env, path, house, "wh3")
    assert f") to {uri}" in third
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
