"""The runtime's commands: `python -m runtime COMMAND ...` (and, with `plan`, the `stratus` script).

Each command is a module with `main(argv) -> int` that returns a `runtime.contract.ExitCode`;
modules are imported only when their command runs, so `--help` of one never loads torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping

from runtime import __version__
from runtime.contract import ExitCode

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("runtime.train.command", "train a preset with DeepSpeed ZeRO (runs DeepSpeed's launcher)"),
    "export": ("runtime.export.command", "consolidate a checkpoint, prune, quantize to int8 ONNX, gate"),
    "publish": ("runtime.repository.command", "publish an exported artifact to a local or s3:// model repository"),
    "serve": ("runtime.serve.command", "serve a model repository over the Open Inference Protocol"),
    "remote": ("runtime.remote.command", "train on a stack's training nodes through SSM Run Command"),
    "wheels": ("runtime.remote.wheels", "build the wheelhouse of a stack without egress (remote --wheels DIR)"),
}
"""name -> (module with `main(argv)`, one line for the usage text)."""


def usage(prog: str, commands: Mapping[str, tuple[str, str]]) -> str:
    lines = [f"usage: {prog} COMMAND [--help] ...", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in commands.items()]
    lines += ["", "exit codes (the same for every command; docs/architecture.md):"]
    lines += [f"  {code.value:>3} {code.name.lower().replace('_', ' ')}" for code in ExitCode]
    return "\n".join(lines)


def dispatch(argv: list[str] | None, *, prog: str, commands: Mapping[str, tuple[str, str]]) -> int:
    """Run the command named by `argv[0]` with the rest of `argv`; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"stratus {__version__}")
        return ExitCode.OK
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog, commands))
        return ExitCode.OK if argv else ExitCode.BAD_INPUT
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"unknown command {name!r}\n\n{usage(prog, commands)}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    module = importlib.import_module(commands[name][0])
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    """`python -m runtime COMMAND ...`."""
    return dispatch(argv, prog="python -m runtime", commands=COMMANDS)
