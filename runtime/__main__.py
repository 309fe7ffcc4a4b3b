"""`python -m runtime {train,export,publish,serve} ...`: the stratus runtime CLI.

Each subcommand lives in its own module with a `main(argv) -> int`; `--help` on each explains it.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("runtime.train", "train a preset with DeepSpeed ZeRO (run under the deepspeed launcher)"),
    "export": ("runtime.export", "consolidate a checkpoint, prune, quantize to int8 ONNX, gate"),
    "publish": ("runtime.publish", "publish an exported artifact to a local or s3:// model repository"),
    "serve": ("runtime.serve", "serve a model repository over the Open Inference Protocol"),
}


def usage() -> str:
    lines = ["usage: python -m runtime COMMAND [--help] ...", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
