"""Shared DeepSpeed runs: each configuration trains once per session, real processes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (ZeRO stage, offload) pairs DeepSpeed allows; parameter offload exists only in ZeRO-3.
ZERO_MATRIX = {
    "z1-none": (1, "none"),
    "z1-optimizer": (1, "optimizer"),
    "z2-none": (2, "none"),
    "z2-optimizer": (2, "optimizer"),
    "z3-none": (3, "none"),
    "z3-optimizer": (3, "optimizer"),
    "z3-all": (3, "all"),
}
SHORT_RUN = ["max_steps=12", "log_every=1", "checkpoint_every=6", "data.num_samples=4000"]


def run_train(
    out_dir: Path,
    run_name: str,
    *sets: str,
    args: tuple[str, ...] = (),
    timeout: int = 600,
    entry: tuple[str, ...] = ("runtime", "train"),
):
    """`python -m runtime train` on 2 local ranks through DeepSpeed's launcher; returns the result.

    `entry`: another module (and its arguments) in place of `runtime train`, e.g. a test entry
    that injects a failpoint (`tests.runtime.train.failpoint`).
    """
    cmd = [sys.executable, "-m", *entry, "--nproc", "2", "--run-name", run_name]
    for s in (f"output_dir={out_dir}", *sets):
        cmd += ["--set", s]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


class ZeroRuns:
    """Lazily trains each ZeRO configuration once and hands out its run directory."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[str, Path] = {}

    def get(self, run_id: str) -> Path:
        if run_id not in self.done:
            stage, offload = ZERO_MATRIX[run_id]
            result = run_train(
                self.root, run_id, *SHORT_RUN, f"parallel.zero_stage={stage}", f"parallel.offload={offload}"
            )
            if result.returncode != 0:
                pytest.fail(
                    f"training {run_id} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
                )
            self.done[run_id] = self.root / run_id
        return self.done[run_id]

    def summary(self, run_id: str) -> dict:
        return json.loads((self.get(run_id) / "summary.json").read_text())


@pytest.fixture(scope="session")
def zero_runs(tmp_path_factory) -> ZeroRuns:
    return ZeroRuns(tmp_path_factory.mktemp("zero-runs"))


# gpt-tiny under ZeRO-3 with parameters and optimizer offloaded, activation checkpointing on.
GPT_RUN = [
    "max_steps=30",
    "log_every=5",
    "eval_every=15",
    "checkpoint_every=30",
    "data.max_bytes=400000",
    "parallel.zero_stage=3",
    "parallel.offload=all",
    "model.activation_checkpointing=true",
]


@pytest.fixture(scope="session")
def gpt_run(tmp_path_factory) -> Path:
    """The run directory of gpt-tiny trained once per session (2 ranks, ZeRO-3, full offload)."""
    root = tmp_path_factory.mktemp("gpt-runs")
    result = run_train(root, "gpt-tiny", *GPT_RUN, args=("--preset", "gpt-tiny"))
    if result.returncode != 0:
        pytest.fail(
            f"training gpt-tiny failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return root / "gpt-tiny"


@pytest.fixture(scope="session")
def gpt_export(gpt_run, tmp_path_factory):
    """gpt-tiny exported once (int8, gated) and published to a local repository as `gpt`:
    (the export result, the repository path)."""
    from runtime.export.config import ExportConfig
    from runtime.export.pipeline import run_export

    root = tmp_path_factory.mktemp("gpt-export")
    cfg = ExportConfig(
        run_dir=gpt_run, out_dir=root / "export", latency_iters=2, publish=str(root / "repo"), model_name="gpt"
    )
    return run_export(cfg), root / "repo"


def write_chat_jsonl(path: Path, num: int = 240, seed: int = 0) -> Path:
    """A small arithmetic chat dataset (`{"messages": [...]}` lines), deterministic."""
    import random

    rng = random.Random(seed)
    lines = []
    for _ in range(num):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        messages = [
            {"role": "system", "content": "Answer with the sum."},
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path
