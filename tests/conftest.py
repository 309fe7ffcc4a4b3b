"""Shared fixtures: a real AWS emulator server (moto, server mode) on 127.0.0.1.

The runtime reaches it through boto3 with the standard environment (AWS_ENDPOINT_URL and
credentials), exactly as it reaches AWS; nothing in boto3 is patched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from runtime.common.net import free_port  # also imported from here by other tests
from tests import hf_chain
from tests.layout import ROOT
from tests.support import aws_test_env


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run scripts/gpu-smoke.sh on a GPU host")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def aws_server(tmp_path_factory):
    """Start `moto.server` on a free loopback port; yield its endpoint URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2)  # noqa: S310 - our own loopback URL
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start; log: {log.read_text()}") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws_env(aws_server, monkeypatch):
    """Point boto3 (in this process and in child processes) at the emulator."""
    env = aws_test_env(aws_server)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return dict(os.environ)


# Shared by tests/runtime/train (what the SIGTERM leaves behind) and tests/test_exit_codes.py (its
# exit code): defined here, at the root, so a session trains it once for both.
@pytest.fixture(scope="session")
def preempted_run(tmp_path_factory) -> tuple[int, str, Path]:
    """`stratus train` on 2 ranks sent SIGTERM after 5 logged steps: (exit code, output, run dir)."""
    root = tmp_path_factory.mktemp("preempted")
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "runtime", "train", "--nproc", "2", "--run-name", "pre"]
    for s in (f"output_dir={root}", "log_every=1", "checkpoint_every=100000", "data.num_samples=4000"):
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = root / "pre" / "metrics.csv"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > 5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training did not reach step 5: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out, root / "pre"


# The bring-your-own-model tests (tests/runtime/train, export and serve) share one small
# Llama-architecture Hugging Face directory and one launch.sh run on it (tests/hf_chain.py), made
# in the background while the single-threaded infra and policy tests run, when a collected test
# needs them (else on first use).
_chain_needed: list[bool] = []


def pytest_collection_finish(session):
    _chain_needed.append(any(hf_chain.FIXTURES & set(getattr(i, "fixturenames", ())) for i in session.items))


def pytest_runtest_logstart(nodeid, location):
    if nodeid.startswith(hf_chain.OVERLAP_WITH) and any(_chain_needed):
        hf_chain.start()


def pytest_sessionfinish(session, exitstatus):
    hf_chain.close()


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """A pre-trained ~1.3M-parameter Llama-architecture HF directory with a BPE tokenizer and a
    chat template, made here (no download); tests must copy it before changing anything in it."""
    return hf_chain.start().model.result()


@pytest.fixture(scope="session")
def hf_launch() -> hf_chain.HfLaunch:
    """`scripts/launch.sh --preset hf-tiny --model-dir <tiny_llama_dir> --data examples/chat.jsonl`
    as the README runs it: fine-tuned (2 ranks, ZeRO-3), exported int4, gated, published."""
    result = hf_chain.start().launch.result()
    if result.returncode != 0:
        pytest.fail(f"launch.sh --preset hf-tiny failed ({result.returncode}):\n{result.output[-8000:]}")
    return result


@pytest.fixture(scope="session")
def hf_run(hf_launch) -> Path:
    """The run directory of hf-tiny fine-tuned once per session (see `hf_launch`)."""
    return hf_launch.run_dir
