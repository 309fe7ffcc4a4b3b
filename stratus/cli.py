"""`stratus train|export|publish|serve|remote|plan ...` (installed by `pip install .`)."""

from __future__ import annotations

import sys

from runtime.cli import COMMANDS, dispatch

ALL_COMMANDS = {
    **COMMANDS,
    "plan": ("infra.tools.plan", "offline plan of a stack: resources, policy verdicts, hourly cost"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(argv, prog="stratus", commands=ALL_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
