"""Large-model benchmark: gpt-small on 2 ranks under DDP, FSDP2 and DeepSpeed ZeRO-1/2/3 (+- offload), then its export.

    DS_ACCELERATOR=cpu flock /tmp/stratus-cpu.lock .venv/bin/python bench/llm.py --run-dir runs/gpt-small
    DS_ACCELERATOR=cpu .venv/bin/python bench/llm.py --rows ddp,fsdp2,z3 --steps 3    # a subset
    .venv/bin/python bench/llm.py --render work/llm.json                            # table of a saved run

Training rows (`gpt-small`: 31.9M parameters, 10 x 512, context 128; global batch 8 sequences =
1,024 tokens per step; fp32; AdamW/Adam lr 6e-4 without clipping; 1 MB of the standard-library
corpus): every row runs under `torchrun --nproc_per_node 2` with `OMP_NUM_THREADS=1` (2 ranks on
2 cores). DDP and FSDP2 (`torch.distributed.fsdp.fully_shard` per block and on the root) use
`torch.optim.AdamW`; the ZeRO rows drive the production `runtime.train.loop.Trainer`
(`bench/_llm_worker.py`). Per row: tokens/s over `--steps` timed steps after `--warmup`
(slowest rank), MFU against the matmul peak every rank measures at start (summed), peak RSS per
rank, and model-state bytes per rank counted between backward and optimizer step
(`bench/_model_state.py`) next to the ZeRO paper's formula (FSDP2 shards like ZeRO-3).

Export section: the manifest of `<run-dir>/export` (written by `stratus export`, e.g. through
`scripts/launch.sh --preset gpt-small`); without one, the export runs here on `--run-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _model_state import paper_bytes

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "bench" / "_llm_worker.py"
MIB = 2**20
ROWS: dict[str, tuple[str, str, int, str]] = {
    # id: (label, engine, ZeRO stage for the formula, offload)
    "ddp": ("DDP (torch AdamW)", "ddp", 0, "none"),
    "fsdp2": ("FSDP2 fully_shard (torch AdamW)", "fsdp2", 3, "none"),
    "z1": ("ZeRO-1", "deepspeed", 1, "none"),
    "z1-off": ("ZeRO-1 + opt offload", "deepspeed", 1, "optimizer"),
    "z2": ("ZeRO-2", "deepspeed", 2, "none"),
    "z2-off": ("ZeRO-2 + opt offload", "deepspeed", 2, "optimizer"),
    "z3": ("ZeRO-3", "deepspeed", 3, "none"),
    "z3-off": ("ZeRO-3 + opt+param offload", "deepspeed", 3, "all"),
}


def run_row(row_id: str, args: argparse.Namespace, port: int) -> dict[str, Any]:
    label, engine, stage, offload = ROWS[row_id]
    out = args.work_dir / row_id
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    worker_stage = str(stage if engine == "deepspeed" else 0)
    cmd = [
        *launcher,
        str(WORKER),
        "--engine",
        engine,
        "--zero-stage",
        worker_stage,
        "--offload",
        offload,
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    print(f"[llm] {label} ...", flush=True)
    load = os.getloadavg()[0]
    result = subprocess.run(cmd, cwd=ROOT / "bench", env=env, capture_output=True, text=True, timeout=900)
    (args.work_dir / f"{row_id}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        return {"id": row_id, "label": label, "error": (result.stdout + result.stderr)[-1500:]}
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {"id": row_id, "label": label, "stage": stage, "ranks": ranks, "load": [load, os.getloadavg()[0]]}


def row_numbers(row: dict[str, Any], best_peak: float | None = None) -> dict[str, Any]:
    """Tokens/s (slowest rank), MFU against `best_peak` (default: the row's own measured peak), RSS, state."""
    ranks = row["ranks"]
    r0 = ranks[0]
    tokens_per_s = r0["steps"] * r0["tokens_per_step"] / max(r["elapsed_s"] for r in ranks)
    peak = sum(r["peak_flops"] for r in ranks)
    states = [sum(v for k, v in r["model_state"].items() if k != "detail") for r in ranks]
    formula, text = paper_bytes(r0["num_params"], 2, row["stage"], "fp32")
    return {
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * _flops_per_token() / (best_peak or peak),
        "peak": peak,
        "rss": [r["peak_rss"] for r in ranks],
        "state": max(states),
        "formula": formula,
        "formula_text": text,
        "loss": r0["losses"][-1],
    }


def _flops_per_token() -> float:
    from runtime.train.gpt import flops_per_token
    from runtime.train.loading import load_config

    return float(flops_per_token(load_config("gpt-small").model))


def render_training(rows: list[dict[str, Any]]) -> str:
    header = (
        "| setup | tokens/s | MFU | own peak (GFLOP/s) | peak RSS rank 0 / 1 (MiB) | model state / rank (MiB) | "
        "vs DDP | ZeRO formula (MiB) | last loss | load avg before-after |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    # The machine is shared: a row's own peak drops when others load it. MFU uses the best one.
    best = max((sum(r["peak_flops"] for r in row["ranks"]) for row in rows if "ranks" in row), default=None)
    numbers = {r["id"]: row_numbers(r, best) for r in rows if "ranks" in r}
    ddp_state = numbers.get("ddp", {}).get("state")
    for r in rows:
        if "ranks" not in r:
            lines.append(f"| {r['label']} | failed: see {r['id']}.log | | | | | | | | |")
            continue
        n = numbers[r["id"]]
        ratio = f"{n['state'] / ddp_state:.2f}x" if ddp_state else "-"
        load = "-".join(f"{v:.1f}" for v in r.get("load", []))
        lines.append(
            f"| {r['label']} | {n['tokens_per_s']:.0f} | {100 * n['mfu']:.1f}% | {n['peak'] / 1e9:.0f} | "
            f"{n['rss'][0] / MIB:,.0f} / {n['rss'][1] / MIB:,.0f} | {n['state'] / MIB:,.1f} | {ratio} | "
            f"{n['formula'] / MIB:,.1f} ({n['formula_text']}) | {n['loss']:.3f} | {load} |"
        )
    if best:
        flops = _flops_per_token() / 1e6
        lines.append(
            f"\nMFU = tokens/s x {flops:.0f} MFLOP/token / {best / 1e9:.0f} GFLOP/s, the best fp32 matmul "
            "peak measured at the start of a row (2 ranks x 1 thread, summed)."
        )
    return "\n".join(lines)


def export_manifest(run_dir: Path, work_dir: Path) -> dict[str, Any]:
    existing = run_dir / "export" / "manifest.json"
    if existing.is_file():
        return json.loads(existing.read_text())
    from runtime.export.config import ExportConfig
    from runtime.export.pipeline import run_export

    return run_export(ExportConfig(run_dir=run_dir, out_dir=work_dir / "export", latency_iters=5)).manifest


def render_export(m: dict[str, Any]) -> str:
    s, met, lat = m["size_bytes"], m["metrics"], m["latency_ms"]
    rows = [
        "| export of gpt-small | fp32 | int8 |",
        "|---|---:|---:|",
        f"| ONNX size (MiB) | {s['fp32_onnx'] / MIB:.1f} | "
        f"{s['int8_onnx'] / MIB:.1f} ({s['int8_vs_fp32_onnx']:.3f}x) |",
        f"| validation perplexity ({met['sequences']} sequences) | {met['fp32']['perplexity']:.3f} | "
        f"{met['exported']['perplexity']:.3f} ({met['perplexity_increase_percent']:+.2f}%) |",
        f"| top-1 next-token agreement with fp32 | - | {100 * met['int8_vs_fp32_logits']['top1_agreement']:.1f}% |",
    ]
    for b in ("batch_1", "batch_8"):
        t = lat[b]
        rows.append(
            f"| latency {b.replace('_', ' ')} x {lat['seq_len']} tokens (ms, {lat['threads']} thread) | "
            f"{t['ort_fp32']:.1f} (torch {t['torch_fp32_eager']:.1f}) | {t['ort_int8']:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--run-dir", type=Path, help="a trained gpt-small run for the export section (skipped without)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/stratus-bench-llm"))
    p.add_argument("--render", type=Path, help="print the tables of a saved results JSON and exit")
    args = p.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        print(render_training(saved["rows"]))
        print(render_export(saved["export"]) if saved.get("export") else "")
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_row(r, args, 29750 + i) for i, r in enumerate(args.rows.split(","))]
    saved: dict[str, Any] = {"rows": rows}
    print(render_training(rows))
    if args.run_dir:
        saved["export"] = export_manifest(args.run_dir, args.work_dir)
        print(render_export(saved["export"]))
    (args.work_dir / "llm.json").write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
