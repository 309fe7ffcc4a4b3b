"""Model artifact: the manifest of a model-repository version directory, and its verification.

A version directory (`<repo>/<model>/<N>/`) holds `model.onnx` and `manifest.json`. The manifest
lists every other regular file with its sha256 and size; a version whose files do not match its
manifest exactly does not exist for `publish` or `serve`. Verification rejects, naming the file:

- a modified file (size or sha256 differs),
- a missing file (listed, not on disk),
- an extra file (on disk, not listed),
- any symlink (file or directory) inside the version directory, and a symlinked version directory,
- a listed path that leaves the directory (`..`, absolute, backslashes, empty parts),
- a malformed manifest (not JSON, wrong format tag, bad `files`/`inputs`/`outputs` entries).

`config_pbtxt` writes the Triton model configuration (`platform: "onnxruntime_onnx"`) so that the
repository layout is also understood by Triton/KServe-style servers.

Manifest keys (written by `runtime.export`): `format`, `files`, `model_name`,
`inputs`/`outputs` = `[{"name", "datatype" (KServe name, e.g. FP32), "shape" ([-1, d])}]`,
`serving_extension` (the model family's extension the server adds, e.g. `generate`; null: none), and
free-form `compression`, `metrics`, `latency_ms`, `size_bytes`, `provenance`, `versions` (a
language model adds `language_model`).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.common.fsutil import atomic_write, sha256_file

MANIFEST = "manifest.json"
FORMAT = "stratus-model/1"

# KServe v2 datatype name -> (numpy dtype name, Triton config data_type).
DATATYPES: dict[str, tuple[str, str]] = {
    "BOOL": ("bool", "TYPE_BOOL"),
    "UINT8": ("uint8", "TYPE_UINT8"),
    "UINT16": ("uint16", "TYPE_UINT16"),
    "UINT32": ("uint32", "TYPE_UINT32"),
    "UINT64": ("uint64", "TYPE_UINT64"),
    "INT8": ("int8", "TYPE_INT8"),
    "INT16": ("int16", "TYPE_INT16"),
    "INT32": ("int32", "TYPE_INT32"),
    "INT64": ("int64", "TYPE_INT64"),
    "FP16": ("float16", "TYPE_FP16"),
    "FP32": ("float32", "TYPE_FP32"),
    "FP64": ("float64", "TYPE_FP64"),
}

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TENSOR_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


class ArtifactError(ValueError):
    """An artifact (version directory or manifest) is invalid; the message names the file."""


def _check_dir(version_dir: Path) -> Path:
    version_dir = Path(version_dir)
    if version_dir.is_symlink():
        raise ArtifactError(f"{version_dir}: the version directory is a symlink; copy it instead")
    if not version_dir.is_dir():
        raise ArtifactError(f"{version_dir}: not a directory; pass a model version directory")
    return version_dir


def _scan(version_dir: Path) -> list[str]:
    """Relative POSIX paths of all regular files under `version_dir` except the root manifest.

    Raises ArtifactError for symlinks and for anything that is neither a file nor a directory.
    """
    found: list[str] = []
    for root, dirs, files in os.walk(version_dir, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(root, name)
            rel = path.relative_to(version_dir).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise ArtifactError(f"{rel}: symlinks are not allowed in an artifact ({path})")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ArtifactError(f"{rel}: not a regular file ({path}); remove it")
            if rel != MANIFEST:
                found.append(rel)
    return sorted(found)


def check_relpath(rel: Any) -> str:
    """Validate a manifest file key: a normalized relative POSIX path inside the directory."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"manifest file key {rel!r}: must be a non-empty string")
    parts = rel.split("/")
    if (
        rel.startswith("/")
        or "\\" in rel
        or "\x00" in rel
        or any(p in ("", ".", "..") for p in parts)
        or PurePosixPath(rel).is_absolute()
        or re.match(r"^[A-Za-z]:", rel)
    ):
        raise ArtifactError(f"{rel}: path leaves the version directory or is not normalized")
    if rel == MANIFEST:
        raise ArtifactError(f"{rel}: the manifest must not list itself")
    return rel


def _check_tensors(manifest: dict, key: str) -> None:
    if key not in manifest:
        return
    specs = manifest[key]
    if not isinstance(specs, list) or not specs:
        raise ArtifactError(f"{MANIFEST}: {key!r} must be a non-empty list of tensor specs")
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ArtifactError(f"{MANIFEST}: {key} entry {spec!r} needs a string 'name'")
        if not _TENSOR_NAME.match(spec["name"]):
            raise ArtifactError(f"{MANIFEST}: {key} name {spec['name']!r} has unsafe characters")
        if spec.get("datatype") not in DATATYPES:
            raise ArtifactError(
                f"{MANIFEST}: {key} {spec['name']!r} datatype {spec.get('datatype')!r} is not one "
                f"of {sorted(DATATYPES)}"
            )
        shape = spec.get("shape")
        if not isinstance(shape, list) or not shape or any(type(d) is not int or d < -1 or d == 0 for d in shape):
            raise ArtifactError(
                f"{MANIFEST}: {key} {spec['name']!r} shape {shape!r} must be a list of positive "
                "ints or -1 (variable), e.g. [-1, 1000]"
            )


def parse_manifest(text: str | bytes) -> dict:
    """Parse and validate manifest JSON (structure only, not the files). Raises ArtifactError."""
    try:
        manifest = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{MANIFEST}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST}: must be a JSON object")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{MANIFEST}: format {manifest.get('format')!r} is not {FORMAT!r}; re-export the model")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{MANIFEST}: 'files' must be a non-empty object")
    for rel, entry in files.items():
        check_relpath(rel)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not _HEX64.match(entry["sha256"])
            or type(entry.get("size")) is not int
            or entry["size"] < 0
        ):
            raise ArtifactError(f"{rel}: manifest entry {entry!r} needs 'sha256' (64 lowercase hex) and 'size' (int)")
    _check_tensors(manifest, "inputs")
    _check_tensors(manifest, "outputs")
    if "model_name" in manifest and not isinstance(manifest["model_name"], str):
        raise ArtifactError(f"{MANIFEST}: 'model_name' must be a string")
    return manifest


def write_manifest(version_dir: Path, info: dict) -> dict:
    """Hash every file of `version_dir` and write `manifest.json` atomically.

    Args:
        version_dir: the version directory (e.g. holding `model.onnx`).
        info: manifest content (model_name, inputs, outputs, metrics, ...); not modified.

    Returns:
        The manifest written: `info` plus `format` and `files` = {relpath: {sha256, size}}.

    Raises:
        ArtifactError: the directory is missing, holds a symlink or special file, or the
            resulting manifest is malformed (e.g. bad `inputs` spec).
    """
    version_dir = _check_dir(version_dir)
    files: dict[str, dict[str, Any]] = {}
    for rel in _scan(version_dir):
        sha, size = sha256_file(version_dir / rel)
        files[rel] = {"sha256": sha, "size": size}
    manifest = {**info, "format": FORMAT, "files": files}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    parse_manifest(text)
    atomic_write(version_dir / MANIFEST, text.encode())
    return manifest


def verify_artifact(version_dir: Path) -> dict:
    """Verify a version directory against its manifest; return the manifest.

    Raises:
        ArtifactError: naming the file, for a modified, missing, extra or symlinked file, a path
            outside the directory, or a missing/malformed manifest.
    """
    version_dir = _check_dir(version_dir)
    manifest_path = version_dir / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise ArtifactError(f"{MANIFEST}: missing or not a regular file in {version_dir}")
    on_disk = _scan(version_dir)
    manifest = parse_manifest(manifest_path.read_bytes())
    listed = manifest["files"]
    extra = sorted(set(on_disk) - set(listed))
    if extra:
        raise ArtifactError(f"{extra[0]}: extra file not in the manifest of {version_dir}")
    for rel in sorted(listed):
        path = version_dir / rel
        if rel not in on_disk:
            raise ArtifactError(f"{rel}: listed in the manifest but missing from {version_dir}")
        if not path.resolve().is_relative_to(version_dir.resolve()):
            raise ArtifactError(f"{rel}: resolves outside {version_dir}")
        want = listed[rel]
        if path.stat().st_size != want["size"]:
            raise ArtifactError(f"{rel}: modified (size {path.stat().st_size}, manifest says {want['size']})")
        sha, _ = sha256_file(path)
        if sha != want["sha256"]:
            raise ArtifactError(f"{rel}: modified (sha256 {sha} != manifest {want['sha256']})")
    return manifest


def _pbtxt_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_pbtxt(model_name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int = 0) -> str:
    """Triton model configuration text for an ONNX Runtime model.

    Args:
        model_name: the model's directory name in the repository.
        inputs/outputs: tensor specs `{"name", "datatype" (KServe), "shape"}`, batch dim included.
        max_batch_size: 0 means shapes are given in full; > 0 means Triton batches and the first
            (batch) dimension is dropped from `dims`, as Triton expects.

    Raises:
        ArtifactError: a spec is malformed (unknown datatype, bad shape, unsafe name).
    """
    if type(max_batch_size) is not int or max_batch_size < 0:
        raise ArtifactError(f"max_batch_size {max_batch_size!r} must be an int >= 0")
    _check_tensors({"inputs": inputs, "outputs": outputs}, "inputs")
    _check_tensors({"inputs": inputs, "outputs": outputs}, "outputs")
    lines = [
        f"name: {_pbtxt_str(model_name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
    ]
    for section, specs in (("input", inputs), ("output", outputs)):
        blocks = []
        for spec in specs:
            dims = spec["shape"][1:] if max_batch_size > 0 else spec["shape"]
            blocks.append(
                "  {\n"
                f"    name: {_pbtxt_str(spec['name'])}\n"
                f"    data_type: {DATATYPES[spec['datatype']][1]}\n"
                f"    dims: [ {', '.join(str(d) for d in dims)} ]\n"
                "  }"
            )
        lines.append(f"{section} [\n" + ",\n".join(blocks) + "\n]")
    return "\n".join(lines) + "\n"
