"""Preemption handling: SIGTERM/SIGINT finish the current step, commit a checkpoint, exit 75.

The wrapper process (`python -m runtime train`) forwards SIGTERM straight to every rank, because
DeepSpeed's launcher terminates its children one at a time; ranks agree on stopping through an
all-reduce at each step boundary, so all of them take part in the final checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

import psutil

_requested = False


def stop_requested() -> bool:
    return _requested


def _on_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    global _requested
    _requested = True


def install_rank_handlers() -> None:
    """In a rank: turn SIGTERM/SIGINT into a stop request checked at the next step boundary."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def _rank_processes(root: psutil.Process) -> list[psutil.Process]:
    ranks = []
    for child in root.children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "runtime.train" in cmd and any(a.startswith("--local_rank") for a in cmd):
            ranks.append(child)
    return ranks


def run_launcher(cmd: list[str]) -> int:
    """Run DeepSpeed's launcher; forward SIGTERM to the ranks; return the launcher's exit code."""
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)

    def forward(signum, frame) -> None:  # noqa: ARG001
        for rank in _rank_processes(root):
            with contextlib.suppress(psutil.Error):
                rank.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    # Ctrl-C reaches every process of the foreground group by itself; just don't die before them.
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        sys.stdout.flush()
