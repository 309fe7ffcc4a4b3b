"""Markdown tables for `bench/train_memory_throughput.py` from the per-rank JSON the workers write."""

from __future__ import annotations

from statistics import mean
from typing import Any

from _model_state import paper_bytes

MIB = 2**20


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / MIB:,.0f}"


def _rate(run: dict[str, Any]) -> float:
    """Samples/s of one launch over its timed steps, timed by the slowest rank."""
    r0 = run["ranks"][0]
    return r0["steps"] * r0["global_batch"] / max(r["elapsed_s"] for r in run["ranks"])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its launches: mean rate, highest peak RSS per rank, model state of the heaviest rank."""
    first = runs[0]
    r0 = first["ranks"][0]
    states = [{k: v for k, v in r["model_state"].items() if k != "detail"} for r in first["ranks"]]
    totals = [sum(s.values()) for s in states]
    formula_bytes, formula = paper_bytes(r0["num_params"], r0["world_size"], first["zero_stage"], first["precision"])
    phases = [{k: 1000 * v / run["ranks"][0]["steps"] for k, v in run["ranks"][0]["phase_s"].items()} for run in runs]
    return {
        "rates": [_rate(run) for run in runs],
        "samples_per_s": mean(_rate(run) for run in runs),
        "peak_rss": [max(run["ranks"][i]["peak_rss"] for run in runs) for i in range(len(first["ranks"]))],
        "rss_start": max(r["rss_start"] for run in runs for r in run["ranks"]),
        "state": states[totals.index(max(totals))],
        "state_total": max(totals),
        "formula_bytes": formula_bytes,
        "formula": formula,
        "phase_ms": {k: mean(p[k] for p in phases) for k in phases[0]},
        "faults_per_step": mean(run["ranks"][0]["page_faults_per_step"] for run in runs),
        "cpu_ms": mean(1000 * run["ranks"][0]["cpu_s_per_step"] for run in runs),
        "wall_ms": mean(1000 * run["ranks"][0]["elapsed_s"] / run["ranks"][0]["steps"] for run in runs),
        "losses": r0["losses"],
        "loads": [run["load_before"] for run in runs],
        "optimizer": r0["optimizer"],
    }


def render(rows: list[list[dict[str, Any]]], *, world_size: int) -> str:
    """The results table (ratios against the plain DDP row when it ran) and the time-per-phase table.

    The second table is rank 0's: phases, wall and process CPU time per timed step (CPU time below
    wall time is time spent waiting, mostly for gloo), minor page faults per step.

    Args:
        rows: per table row, the result of each launch of it (see `run_row`).
    """
    sums = [summarize(runs) for runs in rows]
    ddp = next((s for runs, s in zip(rows, sums, strict=True) if runs[0]["key"] == "ddp"), None)

    def ratio(value: float, base: float | None) -> str:
        return f"{value / base:.2f}x" if base else "-"

    def loss_gap(losses: list[float]) -> str:
        if not ddp:
            return "-"
        gap = max(abs(a - b) for a, b in zip(losses, ddp["losses"], strict=True))
        return f"{gap:.0e}" if gap else "0"

    lines = [
        "| row | precision | samples/s (each run) | vs DDP | peak RSS MiB rank0 / rank1 | vs DDP "
        "| model state MiB/rank: params + grads + master + optim (+ other) = total | vs DDP "
        f"| ZeRO paper, N={world_size}: MiB | max abs loss diff vs DDP | load avg |",
        "|---|---|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for runs, s in zip(rows, sums, strict=True):
        row, st = runs[0], s["state"]
        other = f" (+ {_mib(st['other'])})" if st["other"] else ""
        each = " / ".join(f"{r:.0f}" for r in s["rates"])
        peak = " / ".join(_mib(b) for b in s["peak_rss"])
        loads = "-".join(f"{x:.1f}" for x in sorted({min(s["loads"]), max(s["loads"])}))
        lines.append(
            f"| {row['label']} | {row['precision']} | **{s['samples_per_s']:.0f}** ({each}) "
            f"| {ratio(s['samples_per_s'], ddp and ddp['samples_per_s'])} "
            f"| {peak} | {ratio(max(s['peak_rss']), ddp and max(ddp['peak_rss']))} "
            f"| {_mib(st['params'])} + {_mib(st['grads'])} + {_mib(st['master'])} + {_mib(st['optim'])}{other} "
            f"= {_mib(s['state_total'])} | {ratio(s['state_total'], ddp and ddp['state_total'])} "
            f"| {s['formula']} = {_mib(s['formula_bytes'])} | {loss_gap(s['losses'])} | {loads} |"
        )
    lines += [
        "",
        "| row | optimizer | forward ms/step | backward ms/step | optimizer step ms/step | wall ms/step "
        "| CPU ms/step (all threads) | page faults/step | RSS at start MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for runs, s in zip(rows, sums, strict=True):
        ph = s["phase_ms"]
        lines.append(
            f"| {runs[0]['label']} | {s['optimizer']} | {ph['forward']:.0f} | {ph['backward']:.0f} | {ph['step']:.0f} "
            f"| {s['wall_ms']:.0f} | {s['cpu_ms']:.0f} | {s['faults_per_step']:,.0f} | {_mib(s['rss_start'])} |"
        )
    return "\n".join(lines)
