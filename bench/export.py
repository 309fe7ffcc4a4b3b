"""Export benchmark: artifact size, accuracy and CPU latency of fp32 vs the exported int8 model.

    PYTHONPATH=. DS_ACCELERATOR=cpu .venv/bin/python bench/export.py            # trains if needed
    PYTHONPATH=. DS_ACCELERATOR=cpu .venv/bin/python bench/export.py --models mlp-binary --iters 100

For each model, a real DeepSpeed run (2 CPU ranks, ZeRO-2 + optimizer offload, `python -m runtime
train`) is trained once into `--runs-dir` (reused when a verified checkpoint exists), then exported
in-process with `runtime.export.pipeline.run_export` under several compression settings:

- `int8`: dynamic int8 only (no pruning, no fine-tune);
- `prune+int8`: the export defaults (50% of hidden units removed, 50% magnitude sparsity,
  200 fine-tune steps) then dynamic int8;
- `prune+int8 static` (mlp-binary only): the same with static QDQ quantization.

Models: `mlp-binary` (the brief's 1000 -> 100 -> 1), `mlp-1024` (same data, hidden [1024, 1024]),
`mlp-large` (the preset: 4096 -> 4096 -> 2048 -> 1 on 4096-feature data).

Sizes are ONNX file bytes (fp32 = the unpruned consolidated model exported the same way).
Latency: median of `--iters` calls after 20 warm-up calls, `--threads` intra-op threads for PyTorch
and ONNX Runtime alike, on the validation rows; batch 1 and 64. Goals (issue 4): size <= 0.27x fp32,
accuracy drop <= 1 point, int8 >= 2x faster than PyTorch fp32 eager at batch 64.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    # name: (preset, extra `--set` overrides for training)
    "mlp-binary": ("mlp-binary", ["epochs=3"]),
    "mlp-1024": ("mlp-binary", ["epochs=3", "model.hidden_sizes=[1024,1024]"]),
    "mlp-large": ("mlp-large", []),
}
VARIANTS = {
    "int8": {"structured_fraction": 0.0, "sparsity": 0.0, "finetune_steps": 0},
    "prune+int8": {},
    "prune+int8 static": {"quantization": "static"},
}


def ensure_trained(runs_dir: Path, name: str) -> Path:
    """The run directory of `name`, training it first when it has no verified checkpoint."""
    from runtime.checkpoint.local import CheckpointError, find_latest_verified

    run_dir = runs_dir / name
    try:
        find_latest_verified(run_dir / "checkpoints")
        return run_dir
    except CheckpointError:
        pass
    preset, sets = MODELS[name]
    cmd = [sys.executable, "-m", "runtime", "train", "--preset", preset, "--run-name", name, "--nproc", "2"]
    for s in [f"output_dir={runs_dir}", "log_every=500", *sets]:
        cmd += ["--set", s]
    print(f"training {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=sys.stderr)
    return run_dir


def export_row(run_dir: Path, name: str, variant: str, threads: int, iters: int) -> dict:
    from runtime.export.config import ExportConfig, GateError
    from runtime.export.pipeline import run_export

    settings = VARIANTS[variant]
    slug = variant.replace("+", "-").replace(" ", "-")
    cfg = ExportConfig(
        run_dir=run_dir,
        out_dir=run_dir / f"bench-export-{slug}",
        latency_threads=threads,
        latency_iters=iters,
        **settings,
    )
    try:
        manifest = run_export(cfg).manifest
    except GateError as e:
        return {"model": name, "variant": variant, "error": str(e)}
    return {"model": name, "variant": variant, **manifest}


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table(rows: list[dict], threads: int) -> str:
    head = (
        "| model | variant | params fp32 -> kept (nonzero) | ONNX fp32 -> int8 bytes | size vs fp32 "
        "| accuracy fp32 -> int8 (drop) | b1 ms torch / ort fp32 / ort int8 "
        "| b64 ms torch / ort fp32 / ort int8 | int8 vs torch @64 | goals |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | gate failed: {r['error'][:120]} |" + " |" * 7)
            continue
        c, m, s, lat = r["compression"], r["metrics"], r["size_bytes"], r["latency_ms"]
        b1, b64 = lat["batch_1"], lat["batch_64"]
        ratio = s["int8_onnx"] / s["fp32_onnx"]
        drop = m["fp32"]["accuracy"] - m["exported"]["accuracy"]
        speedup = b64["torch_fp32_eager"] / b64["ort_int8"]
        goals = [ratio <= 0.27, drop <= 1.0, speedup >= 2.0]
        lines.append(
            f"| {r['model']} | {r['variant']} | {c['params_fp32']:,} -> {c['params_pruned']:,} "
            f"({c['nonzero_params_pruned']:,}) | {s['fp32_onnx']:,} -> {s['int8_onnx']:,} | {ratio:.3f}x "
            f"| {m['fp32']['accuracy']:.2f}% -> {m['exported']['accuracy']:.2f}% ({drop:+.2f}) "
            f"| {_ms(b1['torch_fp32_eager'])} / {_ms(b1['ort_fp32'])} / {_ms(b1['ort_int8'])} "
            f"| {_ms(b64['torch_fp32_eager'])} / {_ms(b64['ort_fp32'])} / {_ms(b64['ort_int8'])} "
            f"| {speedup:.1f}x | {'size ' + ('ok' if goals[0] else 'MISS')}, "
            f"{'acc ' + ('ok' if goals[1] else 'MISS')}, {'speed ' + ('ok' if goals[2] else 'MISS')} |"
        )
    lines.append("")
    lines.append(f"Latency: median of timed calls, {threads} intra-op thread(s), PyTorch eager vs ONNX Runtime CPU EP.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-export", help="where runs are trained")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and ONNX Runtime")
    p.add_argument("--iters", type=int, default=200, help="timed calls per latency number")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    from runtime.common.log import get_logger

    for handler in get_logger().handlers:  # progress to stderr, the table alone on stdout
        handler.setStream(sys.stderr)
    rows = []
    for name in names:
        run_dir = ensure_trained(args.runs_dir, name)
        variants = list(VARIANTS) if name == "mlp-binary" else ["int8", "prune+int8"]
        for variant in variants:
            print(f"exporting {name} [{variant}]", file=sys.stderr, flush=True)
            rows.append(export_row(run_dir, name, variant, args.threads, args.iters))
    print(table(rows, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
