"""Staging of an export: the output directory is replaced atomically, and only by a verified artifact.

`stage_artifact` writes `model.onnx` + `manifest.json` (through `runtime.artifact.write_manifest`)
into a hidden sibling directory, verifies it with `runtime.artifact.verify_artifact`, and only then
swaps it in for the previous export. Any failure removes the temp directory and leaves the output
directory exactly as it was. `check_out_dir` (`runtime.export.config`, where `--out` is validated)
refuses to replace anything that is not a previous export, so a mistyped `--out runs` cannot
delete a directory of other files.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from runtime.export.config import check_out_dir
from runtime.repository.artifact import verify_artifact, write_manifest

__all__ = ["check_out_dir", "stage_artifact", "versions"]


def stage_artifact(out_dir: Path, model_path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write `model.onnx` + `manifest.json` into a sibling temp dir, verify, then swap it in.

    The previous export (if any) is replaced only after the new one verified; on any error the
    temp dir is removed and `out_dir` is untouched. Returns the manifest written.
    """
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    try:
        staging.chmod(0o755)
        shutil.copyfile(model_path, staging / "model.onnx")
        manifest = write_manifest(staging, info)
        verify_artifact(staging)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return manifest


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
