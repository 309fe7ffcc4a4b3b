"""Fine-tuning a Hugging Face model under ZeRO: the `hf-tiny` preset on 2 CPU ranks per ZeRO setup.

    PYTHONPATH=. DS_ACCELERATOR=cpu .venv/bin/python bench/hf_finetune.py --model-dir /tmp/llm-bench/test/model

Each row is a real `python -m runtime train --preset hf-tiny --model-dir DIR --data
examples/chat.jsonl` (DeepSpeed's launcher, 2 ranks, `--steps` steps) with the row's ZeRO stage and
offload; the numbers are the run's own `summary.json`: tokens/s (the last `log_every` window) and
MFU against the matmul peak the ranks measured at start, and the parameters each rank holds
(`params_held_per_rank`: under ZeRO-3 its shard). Model state per rank is the ZeRO paper's
formula for fp32 Adam (`bench/_model_state.py: paper_bytes`) at the measured parameter count;
ZeRO-3 + offload holds the same state per rank, but in host memory (the accelerator keeps only
working buffers; on this CPU machine host and device are one).
The `DDP` row is ZeRO stage 0: DeepSpeed's plain data parallelism (every rank holds everything).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _model_state import paper_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    # id: (label, ZeRO stage, offload)
    "ddp": ("DDP (ZeRO-0: DeepSpeed data parallel)", 0, "none"),
    "z2": ("ZeRO-2", 2, "none"),
    "z3": ("ZeRO-3", 3, "none"),
    "z3-off": ("ZeRO-3 + optimizer and parameter offload", 3, "all"),
}
MIB = 2**20


def run_row(row: str, args: argparse.Namespace) -> dict:
    label, stage, offload = ROWS[row]
    cmd = [sys.executable, "-m", "runtime", "train", "--preset", "hf-tiny", "--nproc", "2", "--run-name", row]
    cmd += ["--model-dir", str(args.model_dir), "--data", str(ROOT / "examples" / "chat.jsonl")]
    sets = [f"output_dir={args.work}", f"max_steps={args.steps}", f"log_every={args.steps // 2}"]
    sets += [f"parallel.zero_stage={stage}", f"parallel.offload={offload}", f"checkpoint_every={10 * args.steps}"]
    for s in sets:
        cmd += ["--set", s]
    print(f"[hf-finetune] {label}", flush=True)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    (args.work / f"{row}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{row} failed; see {args.work / f'{row}.log'}")
    summary = json.loads((args.work / row / "summary.json").read_text())
    return {"row": row, "label": label, "stage": stage, "offload": offload, "summary": summary}


def render(rows: list[dict]) -> str:
    lines = [
        "| setup | tokens/s | MFU | parameters held rank 0 / 1 | model state / rank (formula, MiB) | vs DDP "
        "| val perplexity |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ddp = None
    for r in rows:
        s = r["summary"]
        state, formula = paper_bytes(s["num_parameters"], s["world_size"], r["stage"], "fp32")
        if r["offload"] == "all":
            formula += ", all of it in host memory"
        ddp = state if r["row"] == "ddp" else ddp
        held = " / ".join(f"{h:,}" for h in s["params_held_per_rank"])
        ratio = f"{state / ddp:.2f}x" if ddp else "-"
        lines.append(
            f"| {r['label']} | {s['tokens_per_s']:,.0f} | {100 * s['mfu']:.1f}% | {held} | "
            f"{state / MIB:.2f} ({formula}) | {ratio} | {s['val_perplexity']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, help="a Hugging Face directory (stratus model tiny DIR)")
    p.add_argument("--work", type=Path, default=Path("/tmp/stratus-hf-finetune"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", default=",".join(ROWS))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [run_row(row, args) for row in args.rows.split(",")]
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    print(render(rows))


if __name__ == "__main__":
    main()
