"""The bring-your-own-model chain the tests share, started in the background once collected.

Making the tiny Llama (`stratus.tinyllm`) and running `scripts/launch.sh --preset hf-tiny` on it
take about a minute of both cores; the infra and policy tests, which run before the first test
that needs them, are single-threaded, so tests/conftest.py starts the chain in a thread when the
first of them starts (`OVERLAP_WITH`), and the fixtures (`tiny_llama_dir`, `hf_launch`) wait for
its results (or start it, when those tests were not collected). Nothing starts when no collected
test uses them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.layout import ROOT

FIXTURES = {"tiny_llama_dir", "hf_launch", "hf_run", "genai_artifact", "genai_server"}
"""A collected test using any of these needs the chain."""
OVERLAP_WITH = ("tests/infra/", "tests/policy/")
"""The chain starts with the first of these tests: Pulumi programs under mocks, one core's work,
run before the first test that needs the chain (tests/e2e before them trains on both cores)."""
HF_RUN = ["max_steps=6", "eval_every=3", "checkpoint_every=6", "model.activation_checkpointing=true"]
"""hf-tiny: the tiny Llama fine-tuned on 2 ranks with ZeRO-3 (no offload) and activation checkpointing."""


@dataclass(frozen=True)
class HfLaunch:
    """What `scripts/launch.sh --preset hf-tiny --model-dir ... --data examples/chat.jsonl` left behind."""

    run_dir: Path
    """The run: checkpoints, metrics.csv, summary.json, `export/` (the staged int4 artifact)."""
    repo: Path
    """The local model repository it published `hf-tiny` version 1 to."""
    output: str
    """launch.sh's stdout and stderr."""
    returncode: int


class Chain:
    """The tiny Llama, then launch.sh on it, in one background thread."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="stratus-hf-chain-"))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-chain")
        self.model: Future[Path] = self.pool.submit(self._model)
        self.launch: Future[HfLaunch] = self.pool.submit(self._launch)

    def _model(self) -> Path:
        from stratus.tinyllm import make_tiny_llama

        return make_tiny_llama(self.root / "tiny-llama", log=lambda line: None)

    def _launch(self) -> HfLaunch:
        """The README's bring-your-own-model command: fine-tune the tiny Llama on
        `examples/chat.jsonl` (2 ranks, ZeRO-3), export int4 with a KV cache, gate it on validation
        perplexity and publish it to `<root>/runs/model-repo`."""
        model = self.model.result()
        runs = self.root / "runs"
        args = ["--preset", "hf-tiny", "--model-dir", str(model), "--data", str(ROOT / "examples" / "chat.jsonl")]
        args += ["--output-dir", str(runs), "--run-name", "hf-tiny", "--"]
        for s in HF_RUN:
            args += ["--set", s]
        env = {k: v for k, v in os.environ.items() if k != "STRATUS_MODEL_REPO"}
        env["DS_ACCELERATOR"] = "cpu"
        launch = [str(ROOT / "scripts" / "launch.sh"), *args]
        result = subprocess.run(launch, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
        return HfLaunch(
            run_dir=runs / "hf-tiny",
            repo=runs / "model-repo",
            output=result.stdout + result.stderr,
            returncode=result.returncode,
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)


_chain: Chain | None = None


def start() -> Chain:
    """The session's chain, started on first call."""
    global _chain
    if _chain is None:
        _chain = Chain()
    return _chain


def close() -> None:
    global _chain
    if _chain is not None:
        _chain.close()
        _chain = None
