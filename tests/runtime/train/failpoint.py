"""A crash-test entry: `stratus train` whose ranks commit checkpoints with an injected failpoint.

    python -m tests.runtime.train.failpoint kill-during-save:<rank>:<step> --nproc 2 --run-name R ...

The front process runs `stratus train` (preflight, DeepSpeed's launcher, the release of the
ranks' buffers) unchanged, except that the launcher starts this module on each rank, with
`--failpoint=SPEC` ahead of the train arguments. A rank sets the hook
`runtime.checkpoint.commit.HOOKS.after_shards` and then trains exactly like `python -m runtime.train`:
rank <rank> SIGKILLs itself after writing its DeepSpeed shards of step <step> and before the commit
agreement, like a reclaimed node. The product never reads a failpoint; only this test entry sets one.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from runtime.checkpoint.commit import HOOKS
from runtime.train import command

MODULE = "tests.runtime.train.failpoint"
FLAG = "--failpoint="


def kill_during_save(spec: str) -> Callable[[int, int], None]:
    """The `after_shards` hook of `kill-during-save:<rank>:<step>`."""
    kind, rank, step = spec.split(":")
    if kind != "kill-during-save":
        raise ValueError(f"unknown failpoint {spec!r}; known: kill-during-save:<rank>:<step>")

    def hook(at_rank: int, at_step: int) -> None:
        if (at_rank, at_step) == (int(rank), int(step)):
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def main(argv: list[str]) -> int:
    specs = [a.removeprefix(FLAG) for a in argv if a.startswith(FLAG)]
    if specs:  # a rank under DeepSpeed's launcher
        HOOKS.after_shards = kill_during_save(specs[0])
        return command.main([a for a in argv if not a.startswith(FLAG)])
    spec, *train_argv = argv
    kill_during_save(spec)  # a bad spec fails here, before anything launches
    launcher_command = command.launcher_command

    def with_failpoint(args: list[str], nproc: int, master_port: int) -> list[str]:
        cmd = launcher_command(args, nproc, master_port)
        i = cmd.index("runtime.train")
        return [*cmd[:i], MODULE, FLAG + spec, *cmd[i + 1 :]]

    command.launcher_command = with_failpoint
    return command.main(train_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
