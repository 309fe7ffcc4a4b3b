"""Staging of an export: the output directory is replaced atomically, and only by a verified artifact.

`stage_artifact` writes `model.onnx` (or every file of a model directory: external weight data,
runtime config, tokenizer) + `manifest.json` (through `runtime.artifact.write_manifest`, which
hashes every file) into a hidden sibling directory, verifies it with `runtime.artifact.verify_artifact`, and only then
swaps it in for the previous export. Any failure removes the temp directory and leaves the output
directory exactly as it was. `check_out_dir` (`runtime.export.config`, where `--out` is validated)
refuses to replace anything that is not a previous export, so a mistyped `--out runs` cannot
delete a directory of other files.
"""

from __future__ import annotations

import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from runtime.common.fsutil import replaced_dir
from runtime.contract import MODEL_FILE
from runtime.export.config import check_out_dir
from runtime.repository.artifact import MANIFEST, ArtifactError, verify_artifact, write_manifest

__all__ = ["check_out_dir", "stage_artifact", "versions"]


def stage_artifact(out_dir: Path, model_path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write the model + `manifest.json` into a sibling temp dir, verify, then swap it in.

    Args:
        out_dir: the version directory to (re)place.
        model_path: an ONNX file (staged as `model.onnx`) or a directory holding `model.onnx`
            (every file under it is staged, sub-directories kept; no `manifest.json` of its own).
        info: the manifest's content (see `runtime.repository.artifact`).

    The previous export (if any) is replaced only after the new one verified; on any error the
    temp dir is removed and `out_dir` is untouched. Returns the manifest written.

    Raises:
        ArtifactError: a model directory without `model.onnx` or with its own `manifest.json`,
            or what `write_manifest` / `verify_artifact` refuse (e.g. a symlink inside it).
    """
    check_out_dir(out_dir)
    with replaced_dir(out_dir) as staging:
        _copy_model(Path(model_path), staging)
        manifest = write_manifest(staging, info)
        verify_artifact(staging)
    return manifest


def _copy_model(model_path: Path, staging: Path) -> None:
    if not model_path.is_dir():
        shutil.copyfile(model_path, staging / MODEL_FILE)
        return
    if not (model_path / MODEL_FILE).is_file():
        raise ArtifactError(f"{model_path}: a model directory needs {MODEL_FILE}; the build did not write it")
    if (model_path / MANIFEST).exists():
        raise ArtifactError(f"{model_path}/{MANIFEST}: a model directory must not hold its own manifest")
    # symlinks are copied as links so that write_manifest refuses them
    shutil.copytree(model_path, staging, symlinks=True, dirs_exist_ok=True)


def versions() -> dict[str, str]:
    """Versions of the libraries that produced and will run the artifact."""
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "deepspeed": metadata.version("deepspeed"),
        "python": platform.python_version(),
    }
