"""The spot-interruption watcher against a stand-in IMDSv2 on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from runtime.remote.watch import instance_action, rank_processes, watch
from tests.sim.imds import StandInImds


@pytest.fixture
def imds():
    server = StandInImds("127.0.0.1")
    yield server
    server.close()


def test_notice_is_read_with_a_session_token_only(imds):
    assert instance_action(f"{imds.url}/n0") is None
    imds.notify("n0")
    assert '"action": "terminate"' in instance_action(f"{imds.url}/n0")
    with pytest.raises(urllib.error.HTTPError) as e:  # IMDSv1: no token, refused
        urllib.request.urlopen(f"{imds.url}/n0/latest/meta-data/spot/instance-action", timeout=5)  # noqa: S310
    assert e.value.code == 401
    with pytest.raises(ValueError, match="plain http://"):
        instance_action("file:///etc/passwd")


# The rank touches $READY once its handler is installed: a SIGTERM sent before that (the process
# is visible to rank_processes as soon as it exists) would kill it with -15 instead of exit 75.
RANK = (
    "import os, pathlib, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(75)); "
    "pathlib.Path(os.environ['READY']).touch(); time.sleep(60)"
)
NODE_SCRIPT = (
    "import subprocess, sys\n"
    f"r = subprocess.run([sys.executable, '-c', {RANK!r}, '-m', 'runtime.train', '--local_rank=0'])\n"
    "print(r.returncode)\n"
)


def test_watcher_sends_sigterm_to_the_ranks_under_its_pid_only(imds, tmp_path):
    ready = [tmp_path / "parent-rank-ready", tmp_path / "other-rank-ready"]
    parent = subprocess.Popen(
        [sys.executable, "-c", NODE_SCRIPT],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "READY": str(ready[0])},
    )
    other = subprocess.Popen(
        [sys.executable, "-c", RANK, "-m", "runtime.train", "--local_rank=0"],
        env={**os.environ, "READY": str(ready[1])},
    )
    try:
        root = psutil.Process(parent.pid)
        deadline = time.monotonic() + 20
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(rank_processes(root)) == 1
        imds.notify("n1")
        assert watch(parent.pid, f"{imds.url}/n1", 0.1) == 0
        assert parent.communicate(timeout=20)[0].strip() == "75"  # the rank got SIGTERM
        assert other.poll() is None  # a rank of another node script is left alone
    finally:
        for p in (parent, other):
            p.kill()
            p.wait()
