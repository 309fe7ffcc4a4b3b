"""ZeRO memory and throughput benchmark: plain DDP vs DeepSpeed ZeRO-1/2/3, with and without CPU offload.

    DS_ACCELERATOR=cpu .venv/bin/python bench/train_memory_throughput.py           # ~8 min, 2 cores
    DS_ACCELERATOR=cpu .venv/bin/python bench/train_memory_throughput.py --rows ddp,z2-off,z3
    DS_ACCELERATOR=cpu .venv/bin/python bench/train_memory_throughput.py --untuned --repeat 1
    DS_ACCELERATOR=cpu .venv/bin/python bench/train_memory_throughput.py --dry-run  # commands only
    # one change on top of the tuned setup (DeepSpeed key as JSON, or a rank environment variable):
    ... bench/train_memory_throughput.py --rows z2-off --set zero_optimization.overlap_comm=true
    ... bench/train_memory_throughput.py --rows ddp,z2-off --env THP_MEM_ALLOC_ENABLE=0
    .venv/bin/python bench/train_memory_throughput.py --render results.json   # table of a saved --json run

Model: the `mlp-large` preset (4096 -> 4096 -> 2048 -> 1, 25,174,017 parameters), 2 ranks, 64
samples per rank per step (global batch 128), builtin dataset (1,024 rows, cycled), BCE loss, Adam
lr 1e-3 without weight decay or clipping, fp32 unless the row says bf16. DDP rows run under
`torchrun --nproc_per_node 2` (gloo, `torch.optim.AdamW`); DeepSpeed rows under DeepSpeed's
launcher with `runtime.train.deepspeed_config.deepspeed_config(...)` plus `tuned_overrides()` and `TUNED_ENV`
(neither with `--untuned`). ZeRO-3 builds the model inside `deepspeed.zero.Init`.

Each row is launched `--repeat` times, rows interleaved so that load drift on this shared machine
hits all rows alike. Per launch: samples/s over `--steps` timed steps after `--warmup` steps
(barrier before and after, slowest rank), peak RSS per rank (`ru_maxrss`), and one extra step in
which the model-state bytes each rank really holds are counted between backward and optimizer step
(`bench/_model_state.py`), shown next to the ZeRO paper's formula for the row's precision. The loss
sequence is compared with the DDP row's (every fp32 row trains the same model on the same batches).
Logs and per-rank JSON go to `--work-dir`. Environment: `BENCH_MASTER_PORT` (default 29650; each
launch takes the next port).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _bench_table import render

from runtime.train.loading import nest
from runtime.train.loop import deep_merge

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "bench" / "_train_worker.py"
NUM_RANKS = 2


@dataclass(frozen=True, kw_only=True)
class Row:
    label: str
    """Row title in the table."""

    engine: str = "deepspeed"
    """`ddp` (torchrun) or `deepspeed` (DeepSpeed's launcher)."""

    zero_stage: int = 0
    """ZeRO stage (0 for DDP)."""

    offload: str = "none"
    """`none`, `optimizer`, or `all` (ZeRO-3 only: optimizer and parameters)."""

    precision: str = "fp32"
    """`fp32` or `bf16` (DeepSpeed's bf16 mixed precision; the CPU has avx512_bf16)."""

    worker_args: tuple[str, ...] = field(default_factory=tuple)
    """Extra worker flags (DDP variants)."""


ROWS: dict[str, Row] = {
    "ddp": Row(label="DDP (torch AdamW)", engine="ddp"),
    "ddp-tuned": Row(
        label="DDP tuned (bucket view, fused AdamW)", engine="ddp", worker_args=("--bucket-view", "--fused-adamw")
    ),
    "z1": Row(label="ZeRO-1", zero_stage=1),
    "z1-off": Row(label="ZeRO-1 + opt offload", zero_stage=1, offload="optimizer"),
    "z2": Row(label="ZeRO-2", zero_stage=2),
    "z2-off": Row(label="ZeRO-2 + opt offload", zero_stage=2, offload="optimizer"),
    "z3": Row(label="ZeRO-3", zero_stage=3),
    "z3-off": Row(label="ZeRO-3 + opt offload", zero_stage=3, offload="optimizer"),
    "z3-off-all": Row(label="ZeRO-3 + opt+param offload", zero_stage=3, offload="all"),
    "z2-off-bf16": Row(label="ZeRO-2 + opt offload, bf16", zero_stage=2, offload="optimizer", precision="bf16"),
    "z3-bf16": Row(label="ZeRO-3, bf16", zero_stage=3, precision="bf16"),
}

TUNED_ENV = {
    # One OpenMP thread per rank: 2 ranks on 2 cores. torchrun sets this for DDP by itself;
    # DeepSpeed's launcher does not (each rank would run 2 threads: 4 threads on 2 cores).
    "OMP_NUM_THREADS": "1",
    # Tensors >= 2 MB on transparent huge pages (c10's allocator, madvise): every step frees and
    # re-allocates 100+ MB of gradients and temporaries, which glibc returns to the kernel and
    # re-faults 4 KB at a time (75k-185k page faults per step per rank without this).
    "THP_MEM_ALLOC_ENABLE": "1",
}


def tuned_overrides(row: Row) -> dict[str, Any]:
    """Overrides on top of `runtime.train.deepspeed_config.deepspeed_config(...)` measured to help on this CPU.

    docs/benchmarks.md ("Training: ZeRO memory and throughput") has the numbers behind each.
    """
    zero: dict[str, Any] = {
        # The default 5e8-element bucket is a 2 GB `empty` buffer per rank (ZeRO-3 counts it as
        # held); re-allocated each step it also re-faults every gradient page. Parameters larger
        # than the bucket are reduced straight from their own gradient, without the copy.
        "reduce_bucket_size": 5_000_000,
    }
    # Not applied: stage3_use_all_reduce_for_fetch_params=true fetches ZeRO-3 parameters ~7% faster
    # here (gloo's all_gather is slower than its all_reduce) but adds ~31 MiB to the peak RSS, and
    # ZeRO-3 is the memory row.
    # Not a speed setting: the installed DeepSpeed clips gradients to global norm 1.0 unless told
    # otherwise (GRADIENT_CLIPPING_DEFAULT = 1.0); DDP's AdamW does not clip. 0 makes every row
    # train the same way (the loss column checks it).
    out: dict[str, Any] = {"zero_optimization": zero, "gradient_clipping": 0.0}
    if row.offload == "none":
        # torch.optim.Adam(fused=True): one vectorized kernel instead of ~10 passes over the shard.
        out["optimizer"] = {"params": {"fused": True}}
    return out


def parse_set(text: str) -> dict[str, Any]:
    """`a.b=JSON` -> {"a": {"b": value}}; a value that is not JSON is taken as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"--set {text!r}: use key.path=value, e.g. zero_optimization.overlap_comm=true"
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return nest(key, value)


def parse_env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--env {text!r}: use KEY=VALUE, e.g. OMP_NUM_THREADS=2")
    return key, value


def row_overrides(row: Row, untuned: bool, extra: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {} if untuned or row.engine == "ddp" else tuned_overrides(row)
    for update in extra:
        out = deep_merge(out, update)
    return out


def command(row: Row, out_dir: Path, port: int, args: argparse.Namespace, overrides: dict[str, Any]) -> list[str]:
    worker = [
        str(WORKER),
        "--engine",
        row.engine,
        "--zero-stage",
        str(row.zero_stage),
        "--offload",
        row.offload,
        "--precision",
        row.precision,
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--out",
        str(out_dir),
        *row.worker_args,
    ]
    if args.profile:
        worker.append("--profile")
    py = sys.executable
    if row.engine == "ddp":
        launch = [py, "-m", "torch.distributed.run", "--nproc_per_node", str(NUM_RANKS), "--master_port", str(port)]
        return [*launch, *worker]
    launch = [py, "-m", "deepspeed.launcher.runner", "--num_gpus", str(NUM_RANKS), "--master_port", str(port)]
    return [*launch, *worker, "--ds-overrides", json.dumps(overrides, separators=(",", ":"))]


def run_row(key: str, row: Row, attempt: int, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Launch one row once; returns its settings and the ranks' JSON."""
    out_dir = args.work_dir / f"{key}-run{attempt}"
    overrides = row_overrides(row, args.untuned, args.set)
    cmd = command(row, out_dir, port, args, overrides)
    rank_env = {**({} if args.untuned else TUNED_ENV), **dict(args.env)}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    env.update(rank_env)
    if args.dry_run:
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in rank_env.items())
        print(f"{key}: {prefix}{shlex.join(cmd)}")
        return {}
    for stale in out_dir.glob("rank*.json"):
        stale.unlink()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    log_path = args.work_dir / f"{key}-run{attempt}.log"
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=args.row_timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"row {key} exited {proc.returncode}; see {log_path}")
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(NUM_RANKS)]
    print(f"{key} run {attempt}: done in {wall:.0f}s (load before {load_before:.2f})", file=sys.stderr, flush=True)
    return {
        "key": key,
        "label": row.label,
        "engine": row.engine,
        "zero_stage": row.zero_stage,
        "offload": row.offload,
        "precision": row.precision,
        "overrides": overrides,
        "untuned": args.untuned,
        "rank_env": rank_env,
        "load_before": load_before,
        "wall_s": wall,
        "ranks": ranks,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list of: {', '.join(ROWS)}")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocations, CPUAdam init)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per row")
    p.add_argument("--repeat", type=int, default=2, help="runs per row, interleaved (rates are averaged)")
    p.add_argument("--untuned", action="store_true", help="runtime.train.deepspeed_config's output as is, no TUNED_ENV")
    p.add_argument("--env", action="append", type=parse_env, default=[], help="extra rank env KEY=VALUE (wins)")
    p.add_argument("--set", action="append", type=parse_set, default=[], help="extra DeepSpeed override key=JSON")
    p.add_argument("--profile", action="store_true", help="cProfile timed steps (slower; for investigation)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench-train-memory", help="logs and rank JSON")
    p.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    p.add_argument("--row-timeout", type=int, default=300, help="seconds before a row is killed")
    p.add_argument("--dry-run", action="store_true", help="print the launch commands and exit")
    p.add_argument("--render", type=Path, default=None, help="print the tables of a saved --json file and exit")
    args = p.parse_args(argv)
    if args.render:
        print(render(list(json.loads(args.render.read_text()).values()), world_size=NUM_RANKS))
        return 0
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    port = int(os.environ.get("BENCH_MASTER_PORT", "29650"))
    for attempt in range(1 if args.dry_run else args.repeat):  # interleaved: load drift hits every row alike
        for key in keys:
            port += 1  # a fresh port per launch: the previous one may linger in TIME_WAIT
            runs[key].append(run_row(key, ROWS[key], attempt, port, args))
    if args.dry_run:
        return 0
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    print(render(list(runs.values()), world_size=NUM_RANKS))
    print(f"\nTotal wall time {time.perf_counter() - t0:.0f}s; load average after {os.getloadavg()[0]:.2f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
