"""Faults on simulated nodes: a spot interruption notice, and a node whose instance ends (replaced by the group)."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from datetime import UTC, datetime

import pytest

import sim.instance_store
import sim.nodes
import sim.stack
from tests.sim.imds import StandInImds
from tests.sim.runs import launch_on

# ~25 steps/s on this machine: long enough to act mid-run, short enough for the suite.
LONG_SETS = ("data.num_samples=400", "log_every=20")


@pytest.fixture
def imds(sim_stack):
    server = StandInImds(sim_stack.sim["gateway"])
    env_files = [sim_stack.node_root(n) / "etc-stratus" / "node.env" for n in (0, 1)]
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


def _wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(0.2)


def test_a_terminated_node_is_replaced_and_a_restart_resumes_from_s3_on_the_new_set(sim_stack, capfd, stratus_log):
    """The Auto Scaling group's recovery: node 1's instance is lost mid-run (processes SIGKILLed,
    namespace gone), the launcher names it, stops node 0, waits for the group to be whole, and relaunches
    with --resume on {node 0, the replacement}, which starts from an empty scratch.

    Last in the session's use of the training nodes: later tests look the nodes up by rank."""
    s3, bucket = sim_stack.client("s3"), sim_stack.outputs["checkpoints_bucket"]
    node0, node1 = sim_stack.node_ids()
    every = 40
    thread, box = _in_background(
        lambda: launch_on(
            sim_stack,
            "kill",
            *LONG_SETS,
            "log_every=1",  # the step of the kill, from node 0's log
            "max_steps=200",
            "epochs=40",
            f"checkpoint_every={every}",
            remote=("--max-restarts", "1", "--fleet-timeout", "180"),
        )
    )
    started = time.monotonic()
    _wait_latest(s3, bucket, "kill/latest")
    killed = time.monotonic()
    # The group's controller would replace node 1 within a second; held back (as `aws autoscaling
    # suspend-processes --scaling-processes Launch` would) until the launcher has seen the gap.
    sim.nodes.suspend_processes(sim_stack.root, "Launch")
    sim.nodes.terminate_node(sim_stack.root, node1, abrupt=True)  # no shutdown: no checkpoint at the stop
    in_s3 = int(s3.get_object(Bucket=bucket, Key="kill/latest")["Body"].read().decode()[len("global_step") :])
    log0_path = sim_stack.root / node0 / "scratch" / "runs" / "kill" / "node0.log"
    trained = max(int(n) for n in re.findall(r" step (\d+)/200 ", log0_path.read_text()))
    # the launcher stops node 0 and waits for the group: the replacement joins while it waits
    _wait_for(lambda: "1 of 2 node(s) in service" in stratus_log.getvalue(), "the launcher waiting for the group")
    waiting = time.monotonic()
    sim.nodes.resume_processes(sim_stack.root, "Launch")
    _wait_for(lambda: len(sim_stack.node_ids()) == 2, "the group's controller launching a replacement")
    new = sim_stack.node_ids()[1]
    thread.join(300)
    assert not thread.is_alive()
    err = capfd.readouterr()
    text = err.out + err.err + stratus_log.getvalue()
    assert f"node 1 ({node1}) failed: stopping node(s) 0" in text
    assert f"restart 1 of 1: relaunching on {node0}, {new} with --resume" in text
    assert box["result"].code == 0
    assert new not in (node0, node1) and sim_stack.node_ids() == [node0, new]
    assert box["result"].launch.outputs.private_ips[1] == sim.stack.read_sim_file(sim_stack.root)["nodes"][new]["ip"]
    assert s3.get_object(Bucket=bucket, Key="kill/latest")["Body"].read() == b"global_step200"
    resumed = int(re.search(r"resumed /scratch/runs/kill/checkpoints at step (\d+)", log0_path.read_text())[1])
    new_run = sim_stack.root / new / "scratch" / "runs" / "kill"
    assert (new_run / "checkpoints").is_dir() and "exits successfully" in (new_run / "node1.log").read_text()
    # the replacement's scratch is its own new instance store; node 1's went with its instance
    assert f"launched {new} " in (sim_stack.root / "group.log").read_text()
    assert sim.instance_store.mounts_under(sim_stack.root / node1) == []
    assert sim.instance_store.mounts_under(sim_stack.root / new) != []
    assert "done: 200 steps" in log0_path.read_text()
    print(f"kill at step >= {trained}; last checkpoint in S3 then: {in_s3}; resumed at {resumed}")
    first, wait, rest = killed - started, waiting - killed, time.monotonic() - waiting
    print(
        f"launch -> first checkpoint in S3 {first:.1f} s, kill -> launcher waiting for the group {wait:.1f} s, "
        f"replacement -> done {rest:.1f} s"
    )
    assert in_s3 <= resumed <= trained
    assert trained - resumed <= every  # the lost work: at most one checkpoint interval
