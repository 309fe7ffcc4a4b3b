"""A node with no route out installs the runtime through the real `prepare.sh` from a real
wheelhouse (`stratus wheels --cpu`), and a relaunch with the same wheelhouse fetches and installs
nothing.

One simulated node of a `--real-prepare` stack (`sim.prepare`): the wheelhouse and the bundle
naming it go to the emulator's models bucket as `stratus remote --wheels` puts them there
(`sim.serve.upload_bundle`: `runtime.remote.wheelhouse.upload`, then the bundle with its
manifest), then the node's prepare unit runs, as the node script restarts it. The node is given
a serving host's `stack.env` (no DeepSpeed ops built at prepare): the ops build is
`tests/runtime/remote/test_ops.py`'s, and the whole first launch with it is timed in
docs/operations.md.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sim.prepare
import sim.stack
from runtime.contract import PREPARE_UNIT
from sim import serve
from sim.transport import LocalTransport
from tests.sim.conftest import _have_namespaces, leftovers

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not _have_namespaces(), reason="simulated nodes need root, iproute2 and util-linux (ip netns, unshare)"
)


@pytest.fixture(scope="module")
def cpu_wheelhouse(tmp_path_factory) -> Path:
    """`stratus wheels --cpu`: the pins and their dependencies for Linux cp311, from the package index."""
    dest = tmp_path_factory.mktemp("wheels")
    built = subprocess.run(
        [sys.executable, "-m", "stratus", "wheels", "--cpu", "--dest", str(dest)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return dest


def _run(transport: LocalTransport, iid: str, lines: list[str], timeout_s: int = 900) -> dict:
    command = transport.send(iid, lines, comment="offline install test", timeout_s=timeout_s)
    while (result := transport.get_command_invocation(command, iid))["Status"] == "InProgress":
        time.sleep(0.5)
    return result


def test_prepare_builds_the_venv_offline_from_the_wheelhouse_and_a_relaunch_installs_nothing(cpu_wheelhouse, tmp_path):
    sim_dir = tmp_path / "sim"
    outputs = sim.stack.up(sim_dir, num_nodes=1, tag="t", real_prepare=True)
    described = json.loads((sim_dir / "sim.json").read_text())
    try:
        (iid,) = described["nodes"]
        node = Path(described["nodes"][iid]["root"])
        # a serving host's stack.env: the trainer's without the ops build at prepare
        env = {**sim.prepare.trainer_stack_env(described["env"]), "STRATUS_BUILD_OPS": "0"}
        (node / "etc-stratus" / "stack.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
        house = serve.upload_bundle(sim_dir, outputs, cpu_wheelhouse)  # as `stratus remote --wheels` uploads them
        assert house is not None
        transport = LocalTransport(sim_dir)
        check = [
            f"systemctl restart {PREPARE_UNIT}",
            "ip route",  # the node's routes: the bridge's subnet, nothing out
            "/opt/stratus/venv/bin/python -c 'import torch, deepspeed, onnxruntime, runtime.serve.command; "
            'print("imports", torch.__version__, deepspeed.__version__)\'',
        ]
        started = time.monotonic()
        first = _run(transport, iid, check)
        took = time.monotonic() - started
        assert first["Status"] == "Success", first["StandardErrorContent"][-4000:]
        assert "default" not in first["StandardOutputContent"]
        assert "imports 2.13.0+cpu 0.19.8" in first["StandardOutputContent"]
        log = (node / "opt-stratus" / "prepare.log").read_text()
        assert f"fetching the wheelhouse {house.uri(outputs['models_bucket'])}" in log
        assert "offline from the wheelhouse" in log and "runtime venv built" in log
        assert "building DeepSpeed's ops" not in log
        # the venv is new, made with the host's own Python 3.11, and the unpacked wheels are gone
        cfg = (node / "opt-stratus" / "venv" / "pyvenv.cfg").read_text()
        assert "home = /usr/bin" in cfg and "version = 3.11" in cfg
        assert not list((node / "opt-stratus").glob("wheelhouse*"))
        # relaunch, same bundle and wheelhouse: no wheelhouse fetched, nothing installed
        again = _run(transport, iid, check[:1])
        assert again["Status"] == "Success", again["StandardErrorContent"][-4000:]
        second = (node / "opt-stratus" / "prepare.log").read_text()[len(log) :]
        assert "nothing to install" in second and "fetching the wheelhouse" not in second
        print(f"offline install of {house.describe()} on one simulated node: {took:.0f} s")
        described = json.loads((sim_dir / "sim.json").read_text())
    finally:
        sim.stack.down(sim_dir)
    assert not leftovers(described)
