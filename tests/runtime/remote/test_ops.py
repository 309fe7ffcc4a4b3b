"""DeepSpeed's ops built at prepare time (`python -m runtime.remote.ops`): the CUDA checks on the
words `nvidia-smi` and `nvcc` print, the missing-piece messages, and the CPU Adam op built (or
found built) with this machine's DeepSpeed through the module (marked `deepspeed`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.remote import ops

ROOT = Path(__file__).resolve().parents[3]
SMI = "| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: {} |"


def test_the_driver_must_cover_torchs_cuda_major():
    assert ops.check_driver((12, 8), SMI.format("12.8")) is None
    assert ops.check_driver((12, 8), SMI.format("13.0")) is None
    assert "minor-version compatibility" in ops.check_driver((12, 8), SMI.format("12.4"))
    with pytest.raises(ops.OpsError, match="driver supports CUDA 11.8 but torch was built for CUDA 12.8"):
        ops.check_driver((12, 8), SMI.format("11.8"))
    with pytest.raises(ops.OpsError, match="no CUDA version: the NVIDIA driver is not loaded"):
        ops.check_driver((12, 8), "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")


def _toolkit(root: Path, name: str, release: str) -> Path:
    nvcc = root / name / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.85'\n")
    nvcc.chmod(0o755)
    return root / name


def test_the_toolkit_of_torchs_cuda_version_is_preferred(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    assert ops.cuda_home((12, 8), tmp_path) is None
    with pytest.raises(ops.OpsError, match="no CUDA toolkit"):
        ops.check_toolkit((12, 8), None)
    default = _toolkit(tmp_path, "cuda", "13.0")
    assert ops.cuda_home((12, 8), tmp_path) == default
    with pytest.raises(ops.OpsError, match=f"toolkit at {default} is 13.0 but torch was built for CUDA 12.8"):
        ops.check_toolkit((12, 8), default)
    matching = _toolkit(tmp_path, "cuda-12.8", "12.8")  # the DLAMIs ship several side by side
    assert ops.cuda_home((12, 8), tmp_path) == matching and ops.check_toolkit((12, 8), matching) is None
    assert "minor version" in ops.check_toolkit((12, 8), _toolkit(tmp_path, "cuda-12.4", "12.4"))


def test_a_missing_compiler_is_named(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(ops.OpsError, match=r"no C\+\+ compiler \(no-such-c\+\+\).*gcc-c\+\+ \(dnf\) or g\+\+ \(apt\)"):
        ops.check_build_tools()
    assert ops.main([]) == ops.EX_CONFIG


@pytest.mark.deepspeed
def test_the_cpu_adam_op_builds_and_is_then_found_built(tmp_path):
    # The suite's build cache when it has one (scripts/_venv.sh sets it; the other DeepSpeed tests
    # fill it): a fresh directory would cost a ~50 s compile on a 2-core machine at every run.
    ext = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or tmp_path / "ext")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(ext)}
    argv = [sys.executable, "-m", "runtime.remote.ops", "--env-file", str(tmp_path / "ops.env")]
    times = []
    for _ in range(2):
        start = time.monotonic()
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        times.append(time.monotonic() - start)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "DeepSpeed op CPUAdamBuilder built and imported" in result.stderr
    assert list(ext.glob("*/cpu_adam*.so")), list(ext.rglob("*"))
    assert (tmp_path / "ops.env").read_text() == f"TORCH_EXTENSIONS_DIR={ext}\n"
    print(f"cpu_adam: first call {times[0]:.1f} s, second {times[1]:.1f} s")
    assert times[1] < 30  # found built: no compile
