"""Following the nodes' commands: poll every invocation until it ends, then report each node.

`stratus remote` prints one status line per poll (`wait_for_nodes`) and, when every node is done,
each node's output tail with a hint for SSM's own failure states (`report`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runtime.common.log import get_logger
from runtime.contract import ExitCode

TERMINAL = ("Success", "Failed", "Cancelled", "TimedOut")
log = get_logger()


def wait_for_nodes(
    ssm: Any,
    instance_ids: list[str],
    command_ids: list[str],
    *,
    interval: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    out: Callable[[str], None] = print,
    on_failure: Callable[[int, list[int]], None] | None = None,
) -> list[dict[str, Any]]:
    """Poll each node's invocation until all are terminal, printing `node status` lines.

    `ssm` is a `NodeTransport` (or a boto3 SSM client). When a node fails other than by
    preemption (exit 75: the others stop by themselves, after committing), `on_failure(node,
    running nodes)` is called once, to stop the others rather than let them wait for the
    collective timeout. Returns the final invocations in node order.
    """
    results: list[dict[str, Any] | None] = [None] * len(instance_ids)
    start = time.monotonic()
    while True:
        for rank, (iid, cid) in enumerate(zip(instance_ids, command_ids, strict=True)):
            if results[rank] is None or results[rank]["Status"] not in TERMINAL:
                results[rank] = ssm.get_command_invocation(CommandId=cid, InstanceId=iid)
        elapsed = int(time.monotonic() - start)
        states = "  ".join(
            f"node{r} {iid} {res['Status']}" for r, (iid, res) in enumerate(zip(instance_ids, results, strict=True))
        )
        out(f"[remote] {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}  {states}")
        if all(r["Status"] in TERMINAL for r in results):
            return results  # type: ignore[return-value]
        failed = [
            r
            for r, res in enumerate(results)
            if res["Status"] in TERMINAL
            and res["Status"] != "Success"
            and res.get("ResponseCode") != ExitCode.PREEMPTED
        ]
        if failed and on_failure is not None:
            on_failure(failed[0], [r for r, res in enumerate(results) if res["Status"] not in TERMINAL])
            on_failure = None
        sleep(interval)


def tail(text: str, lines: int = 40) -> str:
    """The last `lines` lines of a node's output (SSM keeps up to 24,000 characters of each stream)."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


_HINTS = {
    "Undeliverable": "the SSM agent is unreachable: is the node running and registered "
    "(aws ssm describe-instance-information)?",
    "DeliveryTimedOut": "the SSM agent never picked the command up: check the node and its instance profile",
    "ExecutionTimedOut": "the command ran past --execution-timeout",
}


def report(results: list[dict[str, Any]], *, run_name: str, out: Callable[[str], None] = print) -> ExitCode:
    """Print each node's output tail; return 0, 75 (only preemptions) or 1, naming failed nodes."""
    failed = []
    for rank, res in enumerate(results):
        out(
            f"--- node {rank} ({res.get('InstanceId', '?')}): {res['Status']} ({res.get('StatusDetails', '')}), "
            f"exit {res.get('ResponseCode', '?')}"
        )
        if res.get("StandardOutputContent"):
            out(tail(res["StandardOutputContent"]))
        if res["Status"] != "Success":
            if res.get("StandardErrorContent"):
                out(tail(res["StandardErrorContent"], 20))
            failed.append((rank, res))
    if not failed:
        out(f"[remote] {run_name}: every node succeeded")
        return ExitCode.OK
    for rank, res in failed:
        hint = _HINTS.get(res.get("StatusDetails", ""), "see its output above and the full log on the node")
        log.error(
            "node %d (%s) %s, exit %s: %s",
            rank,
            res.get("InstanceId", "?"),
            res["Status"],
            res.get("ResponseCode", "?"),
            hint,
        )
    if all(res.get("ResponseCode") == ExitCode.PREEMPTED for _, res in failed):
        log.error("preempted after committing a checkpoint: rerun with --resume --run-name %s", run_name)
        return ExitCode.PREEMPTED
    return ExitCode.FAILED
