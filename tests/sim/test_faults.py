"""Faults on simulated nodes: a spot interruption notice, and a node whose processes are all killed."""

from __future__ import annotations

import io
import logging
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime

import pytest

from tests.sim.imds import StandInImds
from tests.sim.runs import launch_on

# ~25 steps/s on this machine: long enough to act mid-run, short enough for the suite.
LONG_SETS = ("data.num_samples=400", "log_every=20")


@pytest.fixture
def imds(sim_stack):
    server = StandInImds(sim_stack.sim["gateway"])
    env_files = [sim_stack.root / f"sim-node{n}" / "etc-stratus" / "node.env" for n in (0, 1)]
    before = [f.read_text() for f in env_files]
    for n, f in enumerate(env_files):
        f.write_text(before[n] + f"STRATUS_IMDS_ENDPOINT={server.url}/node{n}\n")
    try:
        yield server
    finally:
        for f, text in zip(env_files, before, strict=True):
            f.write_text(text)
        server.close()


@pytest.fixture
def stratus_log():
    """What the `stratus` logger writes during the test (its own handler writes to whichever
    stdout was current when it was made, which need not be the one capfd reads)."""
    stream, logger = io.StringIO(), logging.getLogger("stratus")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def _in_background(fn):
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn()), daemon=True)
    thread.start()
    return thread, box


def _wait_latest(s3, bucket: str, key: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"):
            return
        time.sleep(0.2)
    pytest.fail(f"no s3://{bucket}/{key} within {timeout_s} s")


def test_interruption_notice_commits_uploads_and_exits_75_then_resumes(sim_stack, imds):
    s3, bucket = sim_stack.client("s3"), sim_stack.outputs["checkpoints_bucket"]
    thread, box = _in_background(
        lambda: launch_on(sim_stack, "spot", *LONG_SETS, "max_steps=3000", "epochs=400", "checkpoint_every=40")
    )
    _wait_latest(s3, bucket, "spot/latest")
    noticed = datetime.now(UTC)
    imds.notify("node1")
    thread.join(180)
    assert not thread.is_alive() and box["result"].code == 75
    log0 = (sim_stack.scratch(0) / "runs" / "spot" / "node0.log").read_text()
    stop_line = next(line for line in log0.splitlines() if "stop requested" in line)
    tag = stop_line.split("checkpoint ")[1].split(" committed")[0]
    latest = s3.get_object(Bucket=bucket, Key="spot/latest")
    assert latest["Body"].read().decode() == tag  # the checkpoint of the stop, uploaded before exit 75
    seconds = (latest["LastModified"] - noticed).total_seconds()
    print(f"notice -> committed upload of {tag}: {seconds:.1f} s")
    stopped = int(tag[len("global_step") :])
    imds.notices.clear()  # the replacement capacity gets no notice
    resumed = launch_on(
        sim_stack,
        "spot",
        *LONG_SETS,
        f"max_steps={stopped + 10}",
        "epochs=400",
        "checkpoint_every=40",
        extra=("--resume",),
    )
    assert resumed.code == 0
    log0 = (sim_stack.scratch(0) / "runs" / "spot" / "node0.log").read_text()
    assert f"at step {stopped} " in log0  # nothing lost: the stop committed its own step


def test_killed_node_is_named_and_a_restart_resumes_from_s3_on_empty_scratch(sim_stack, capfd, stratus_log):
    s3, bucket = sim_stack.client("s3"), sim_stack.outputs["checkpoints_bucket"]
    thread, box = _in_background(
        lambda: launch_on(
            sim_stack,
            "kill",
            *LONG_SETS,
            "max_steps=200",
            "epochs=40",
            "checkpoint_every=40",
            remote=("--max-restarts", "1"),
        )
    )
    _wait_latest(s3, bucket, "kill/latest")
    netns = sim_stack.sim["nodes"]["sim-node1"]["netns"]
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        subprocess.run(["kill", f"-{signal.SIGKILL.value}", pid], capture_output=True)
    shutil.rmtree(sim_stack.scratch(1) / "runs", ignore_errors=True)  # a replaced node: empty scratch
    thread.join(240)
    assert not thread.is_alive()
    err = capfd.readouterr()
    text = err.out + err.err + stratus_log.getvalue()
    assert "node 1 (sim-node1) failed: stopping node(s) 0" in text
    assert "restart 1 of 1" in text
    assert box["result"].code == 0
    assert s3.get_object(Bucket=bucket, Key="kill/latest")["Body"].read() == b"global_step200"
    log0 = (sim_stack.scratch(0) / "runs" / "kill" / "node0.log").read_text()
    assert "resumed /scratch/runs/kill/checkpoints at step" in log0
    assert (sim_stack.scratch(1) / "runs" / "kill" / "checkpoints").is_dir()  # downloaded, then trained on
