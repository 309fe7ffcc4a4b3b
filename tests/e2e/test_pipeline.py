"""The whole product on one machine: launch.sh trains (ZeRO, 2 ranks), exports, publishes; the server answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from runtime.train.config import DataConfig
from runtime.train.data import load_dataset
from tests.conftest import free_port
from tests.runtime.conftest import ROOT

WORLD_2 = "eyJsb2NhbGhvc3QiOiBbMCwgMV19"  # DeepSpeed's --world_info for 2 local ranks: base64 of {"localhost": [0, 1]}

LAUNCH = str(ROOT / "scripts" / "launch.sh")


def launch(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_MODEL_REPO"}
    return subprocess.run([LAUNCH, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_help_explains_every_option():
    result = launch("--help")
    assert result.returncode == 0
    for option in (
        "--preset",
        "--nproc",
        "--zero-stage",
        "--offload",
        "--data",
        "--resume",
        "--run-name",
        "--output-dir",
        "--no-export",
        "--stack",
        "--dry-run",
    ):
        assert option in result.stdout, option


def test_unknown_option_is_refused():
    result = launch("--zero", "3")
    assert result.returncode == 2 and "unknown option --zero" in result.stderr


def test_dry_run_prints_generated_config_and_starts_nothing(tmp_path):
    result = launch(
        "--dry-run",
        "--zero-stage",
        "3",
        "--offload",
        "all",
        "--output-dir",
        str(tmp_path),
        "--",
        "--set",
        "global_batch_size=64",
    )
    assert result.returncode == 0, result.stderr
    ds = json.loads(result.stdout.split("DeepSpeed config:\n", 1)[1].split("\ncommand:", 1)[0])
    assert ds["zero_optimization"]["stage"] == 3 and "offload_param" in ds["zero_optimization"]
    assert ds["train_batch_size"] == 64 and ds["train_micro_batch_size_per_gpu"] == 32
    assert "deepspeed.launcher.launch --world_info=" + WORLD_2 in result.stdout
    assert f"python -m runtime export --run-dir {tmp_path}/mlp-binary" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.deepspeed
def test_launch_trains_exports_publishes_and_the_server_answers(tmp_path):
    result = launch(
        "--output-dir",
        str(tmp_path),
        "--run-name",
        "e2e",
        "--",
        "--set",
        "max_steps=150",
        "--set",
        "data.num_samples=4000",
        "--set",
        "log_every=50",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run = tmp_path / "e2e"
    for name in ("metrics.csv", "training.png", "summary.json", "export/model.onnx", "export/manifest.json"):
        assert (run / name).is_file(), name
    repo = tmp_path / "model-repo"
    assert (repo / "mlp-binary" / "LATEST").read_text().strip() == "1"

    token = tmp_path / "token"
    token.write_text("pipeline-token-0123456789abcdef")
    token.chmod(0o600)
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime",
            "serve",
            "--repo",
            str(repo),
            "--model",
            "mlp-binary",
            "--port",
            str(port),
            "--token-file",
            str(token),
            "--insecure-plain-http",  # 127.0.0.1; TLS is tests/runtime/serve/test_tls.py's
        ],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {token.read_text()}"}
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", headers=auth, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        data = load_dataset(DataConfig(num_samples=4000), seed=1234)
        x = data.x[data.val_idx[:64]]
        y = data.y[data.val_idx[:64]]
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        reply = httpx.post(f"{url}/v2/models/mlp-binary/infer", json=body, headers=auth, timeout=10)
        assert reply.status_code == 200, reply.text
        out = reply.json()
        assert out["model_version"] == "1"
        prob = np.asarray(out["outputs"][0]["data"], dtype=np.float32)
        assert prob.shape == (64,) and ((prob > 0.5) == (y > 0.5)).mean() >= 0.9
        assert httpx.post(f"{url}/v2/models/mlp-binary/infer", json=body, timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
