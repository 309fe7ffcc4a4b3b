"""Artifact manifest: written atomically with true hashes; every tampering case is rejected."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from runtime.repository.artifact import (
    FORMAT,
    MANIFEST,
    ArtifactError,
    config_pbtxt,
    verify_artifact,
    write_manifest,
)

INFO = {
    "model_name": "tiny",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}],
    "metrics": {"accuracy": 0.9},
}


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    d = tmp_path / "1"
    (d / "extra_data").mkdir(parents=True)
    (d / "model.onnx").write_bytes(os.urandom(4096))
    (d / "extra_data" / "weights.bin").write_bytes(b"w" * 100)
    write_manifest(d, INFO)
    return d


def _rewrite_manifest(d: Path, mutate) -> None:
    manifest = json.loads((d / MANIFEST).read_text())
    mutate(manifest)
    (d / MANIFEST).write_text(json.dumps(manifest))


def test_write_manifest_records_true_hashes_and_sizes(version_dir: Path):
    manifest = json.loads((version_dir / MANIFEST).read_text())
    assert manifest["format"] == FORMAT
    assert manifest["model_name"] == "tiny" and manifest["metrics"] == {"accuracy": 0.9}
    assert sorted(manifest["files"]) == ["extra_data/weights.bin", "model.onnx"]
    for rel, entry in manifest["files"].items():
        data = (version_dir / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert verify_artifact(version_dir) == manifest
    # atomic write leaves no temp files behind, and a rewrite does not list the old manifest
    assert sorted(p.name for p in version_dir.iterdir()) == ["extra_data", MANIFEST, "model.onnx"]
    again = write_manifest(version_dir, INFO)
    assert MANIFEST not in again["files"]


def test_write_manifest_does_not_mutate_info(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    info = {"model_name": "m"}
    write_manifest(tmp_path, info)
    assert info == {"model_name": "m"}


def test_modified_same_size_rejected(version_dir: Path):
    data = bytearray((version_dir / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (version_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.onnx: modified \(sha256"):
        verify_artifact(version_dir)


def test_modified_size_rejected(version_dir: Path):
    with open(version_dir / "extra_data" / "weights.bin", "ab") as f:
        f.write(b"!")
    with pytest.raises(ArtifactError, match=r"extra_data/weights\.bin: modified \(size 101"):
        verify_artifact(version_dir)


def test_missing_file_rejected(version_dir: Path):
    (version_dir / "extra_data" / "weights.bin").unlink()
    with pytest.raises(ArtifactError, match=r"extra_data/weights\.bin: listed in the manifest but missing"):
        verify_artifact(version_dir)


@pytest.mark.parametrize("rel", ["notes.txt", "extra_data/more.bin", "sub/dir/x"])
def test_extra_file_rejected(version_dir: Path, rel: str):
    (version_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (version_dir / rel).write_bytes(b"surprise")
    with pytest.raises(ArtifactError, match=re.escape(rel) + ": extra file"):
        verify_artifact(version_dir)


def test_symlinked_file_rejected_even_with_matching_content(version_dir: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes((version_dir / "model.onnx").read_bytes())
    (version_dir / "model.onnx").unlink()
    (version_dir / "model.onnx").symlink_to(outside)
    with pytest.raises(ArtifactError, match=r"model\.onnx: symlinks are not allowed"):
        verify_artifact(version_dir)


def test_symlinked_subdirectory_rejected(version_dir: Path, tmp_path: Path):
    real = tmp_path / "real_extra"
    (version_dir / "extra_data").rename(real)
    (version_dir / "extra_data").symlink_to(real, target_is_directory=True)
    with pytest.raises(ArtifactError, match=r"extra_data: symlinks are not allowed"):
        verify_artifact(version_dir)


def test_symlinked_manifest_and_version_dir_rejected(version_dir: Path, tmp_path: Path):
    link = tmp_path / "link-to-version"
    link.symlink_to(version_dir, target_is_directory=True)
    with pytest.raises(ArtifactError, match="version directory is a symlink"):
        verify_artifact(link)
    real = tmp_path / "manifest-copy.json"
    real.write_bytes((version_dir / MANIFEST).read_bytes())
    (version_dir / MANIFEST).unlink()
    (version_dir / MANIFEST).symlink_to(real)
    with pytest.raises(ArtifactError, match="manifest.json"):
        verify_artifact(version_dir)


@pytest.mark.parametrize("rel", ["../secret.bin", "/etc/hostname", "extra_data/../../secret.bin", "./model.onnx"])
def test_path_outside_directory_rejected(version_dir: Path, tmp_path: Path, rel: str):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not part of the artifact")
    entry = {"sha256": hashlib.sha256(secret.read_bytes()).hexdigest(), "size": secret.stat().st_size}
    _rewrite_manifest(version_dir, lambda m: m["files"].__setitem__(rel, entry))
    with pytest.raises(ArtifactError, match=re.escape(rel) + ": path leaves the version directory"):
        verify_artifact(version_dir)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.__setitem__("format", "other/1"), "format 'other/1'"),
        (lambda m: m.__setitem__("files", []), "'files' must be a non-empty object"),
        (lambda m: m["files"]["model.onnx"].__setitem__("sha256", "abc"), "needs 'sha256'"),
        (lambda m: m["files"]["model.onnx"].__setitem__("size", "10"), "needs 'sha256'"),
        (lambda m: m.__setitem__("inputs", [{"name": "x", "datatype": "FLOAT", "shape": [-1]}]), "datatype 'FLOAT'"),
        (lambda m: m.__setitem__("inputs", [{"name": "x", "datatype": "FP32", "shape": [0]}]), "shape"),
        (lambda m: m["files"].__setitem__(MANIFEST, m["files"]["model.onnx"]), "must not list itself"),
    ],
    ids=["format", "files-type", "bad-sha", "bad-size", "bad-datatype", "bad-shape", "lists-itself"],
)
def test_malformed_manifest_rejected(version_dir: Path, mutate, message: str):
    _rewrite_manifest(version_dir, mutate)
    with pytest.raises(ArtifactError, match=re.escape(message)):
        verify_artifact(version_dir)


def test_manifest_not_json_or_missing(version_dir: Path):
    (version_dir / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        verify_artifact(version_dir)
    (version_dir / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        verify_artifact(version_dir)


def test_write_manifest_refuses_symlinks(tmp_path: Path):
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "model.onnx").symlink_to(tmp_path / "real")
    with pytest.raises(ArtifactError, match="symlinks are not allowed"):
        write_manifest(tmp_path, INFO)
    assert not (tmp_path / MANIFEST).exists()


def test_config_pbtxt_full_shapes_and_batched():
    text = config_pbtxt("tiny", INFO["inputs"], INFO["outputs"])
    assert 'name: "tiny"' in text and 'platform: "onnxruntime_onnx"' in text
    assert "max_batch_size: 0" in text
    blocks = re.findall(r"name: \"(\w+)\"\s+data_type: (\w+)\s+dims: \[ ([-\d, ]+) \]", text)
    assert blocks == [("input", "TYPE_FP32", "-1, 8"), ("output", "TYPE_FP32", "-1, 1")]
    batched = config_pbtxt("tiny", INFO["inputs"], INFO["outputs"], max_batch_size=64)
    assert "max_batch_size: 64" in batched
    assert re.findall(r"dims: \[ ([-\d, ]+) \]", batched) == ["8", "1"]


def test_config_pbtxt_rejects_bad_specs():
    with pytest.raises(ArtifactError, match="datatype 'float32'"):
        config_pbtxt("m", [{"name": "x", "datatype": "float32", "shape": [-1, 2]}], INFO["outputs"])
    with pytest.raises(ArtifactError, match="unsafe characters"):
        config_pbtxt("m", [{"name": 'x"\n', "datatype": "FP32", "shape": [-1, 2]}], INFO["outputs"])
