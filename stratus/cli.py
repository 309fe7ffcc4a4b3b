"""`stratus train|export|publish|serve|remote|plan ...` (installed by `pip install .`)."""

from __future__ import annotations

import sys

from runtime.cli import COMMANDS, dispatch

ALL_COMMANDS = {
    **COMMANDS,
    # the runtime's launcher with the simulator's transport injected for --sim-dir (stratus.remote)
    "remote": ("stratus.remote", f"{COMMANDS['remote'][1]} (or simulated ones: --sim-dir DIR)"),
    "plan": ("infra.tools.plan", "offline plan of a stack: resources, policy verdicts, hourly cost"),
    "model": ("stratus.model", "push a Hugging Face model directory to a stack (or make a tiny one)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, prog="stratus", commands=ALL_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
