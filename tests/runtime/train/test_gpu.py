"""GPU path (skipped without CUDA): bf16 + NCCL ZeRO training and export, via scripts/gpu-smoke.sh."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.runtime.conftest import ROOT


@pytest.mark.gpu
def test_gpu_smoke_bf16_nccl_zero_and_export(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "smoke"), "STRATUS_SYSTEM_PYTHON": "1"}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-smoke.sh")], capture_output=True, text=True, env=env, timeout=1800
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.count("PASS ") == 4
