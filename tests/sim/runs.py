"""Launches on the simulated stack, shared by the tests of this package (each trains once)."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.common.options import parse_options
from runtime.remote.command import Launch, RemoteOptions
from runtime.train.command import parse_train_options
from stratus.remote import local_transport

# 2 nodes x 1 rank; the one-node baseline runs the same sets on 2 local ranks.
E2E_SETS = ("max_steps=8", "log_every=1", "checkpoint_every=2", "data.num_samples=400")


@dataclass
class SimLaunch:
    launch: Launch
    code: int


def launch_on(stack, run_name: str, *sets: str, extra: tuple[str, ...] = (), remote: tuple[str, ...] = ()):
    """`stratus remote --sim-dir` in this process (the nodes are real processes); returns SimLaunch.

    The launch gets the simulator's transport as the front door (`stratus.remote`) gives it."""
    train = ["--run-name", run_name, *extra]
    for s in sets:
        train += ["--set", s]
    opts = parse_options(
        RemoteOptions, ["--sim-dir", str(stack.root), "--poll-interval", "0.5", *remote], prog="remote"
    )
    with pytest.MonkeyPatch.context() as mp:
        for k, v in stack.env.items():
            mp.setenv(k, v)
        launch = Launch(opts, parse_train_options(train), sim_transport=local_transport)
        code = launch.run()
    return SimLaunch(launch, int(code))


def node_scripts(stack, launch_id: str) -> dict[int, str]:
    """The `_script.sh` each simulated node ran for the launch `launch_id`."""
    found = {}
    for rank in (0, 1):
        for path in glob.glob(str(stack.node_root(rank) / "commands" / "*" / "_script.sh")):
            text = Path(path).read_text()
            if f"--launch-id {launch_id}" in text:
                found[rank] = text
    return found
