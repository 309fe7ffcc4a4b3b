"""Train a preset with DeepSpeed ZeRO data parallelism (CPU offload on CPU machines).

Runbook:
    # validate config and data, print the DeepSpeed config and the launch command, start nothing
    python -m runtime train --preset mlp-binary --nproc 2 --dry-run
    # launch 2 local ranks through DeepSpeed's own launcher (what scripts/launch.sh does)
    DS_ACCELERATOR=cpu python -m runtime train --preset mlp-binary --nproc 2 --set parallel.zero_stage=3
    # the same, calling the launcher yourself
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module runtime.train --preset mlp-binary
    # continue from the newest verified checkpoint of the run
    python -m runtime train --run-name mlp-binary --resume

Outputs in runs/<run-name>/: checkpoints/, metrics.csv, training.png, summary.json.
Exit codes: 0 done; 2 bad config/data/arguments; 3 no usable checkpoint; 75 preempted by
SIGTERM/SIGINT after committing a checkpoint (rerun with --resume to continue).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
from typing import Any

from runtime.config import ConfigError, TrainConfig, deepspeed_config, load_config
from runtime.data import DataError, Dataset, load_dataset, steps_per_epoch
from runtime.log import get_logger

EXIT_BAD_INPUT = 2
EXIT_NO_CHECKPOINT = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was committed; rerun with --resume

log = get_logger()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime train",
        description="Train a preset with DeepSpeed ZeRO data parallelism. Run directly, it validates "
        "config and data and then starts DeepSpeed's launcher with --nproc local ranks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", default="mlp-binary", help="named preset to start from (mlp-binary, mlp-large)")
    p.add_argument("--config", help="YAML/JSON file overriding preset fields (unknown keys are errors)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set parallel.zero_stage=3 --set epochs=2 (repeatable)",
    )
    p.add_argument("--run-name", help="run directory name under output_dir (default: the preset's)")
    p.add_argument("--data", help="dataset: a .npz/.csv path or s3://bucket/key (sets data.source)")
    p.add_argument("--resume", action="store_true", help="continue from the newest verified checkpoint")
    p.add_argument("--nproc", type=int, default=2, help="local ranks to launch (ignored under a launcher)")
    p.add_argument("--master-port", type=int, default=0, help="rendezvous port (0: pick a free one)")
    p.add_argument("--dry-run", action="store_true", help="validate, print DeepSpeed config and command, exit")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by DeepSpeed
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    if args.run_name:
        overrides.append(f"run_name={args.run_name}")
    if args.data:
        overrides.append(f"data.source={json.dumps(args.data)}")
    return load_config(args.preset, config_file=args.config, overrides=overrides)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_command(argv: list[str], nproc: int, master_port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(nproc),
        "--master_port",
        str(master_port),
        "--module",
        "runtime.train",
        *argv,
    ]


def _device() -> str:
    accel = os.environ.get("DS_ACCELERATOR")
    if accel:
        return "cuda" if accel == "cuda" else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def validate(cfg: TrainConfig, *, world_size: int, device: str) -> tuple[dict[str, Any], Dataset, int]:
    """Check that `cfg` and its data can train on `world_size` ranks of `device`; launch nothing.

    Shared by the local preflight and `runtime.remote` (which validates before sending a job).

    Returns:
        (the DeepSpeed config dict, the loaded and split dataset, optimizer steps per epoch).

    Raises:
        ConfigError: the batch does not divide over the ranks or exceeds the training rows.
        DataError: the data source cannot be read or fails validation.
    """
    ds = deepspeed_config(cfg, world_size=world_size, device=device)
    data = load_dataset(cfg.data, cfg.seed)
    spe = steps_per_epoch(len(data.train_idx), cfg.global_batch_size)
    if spe < 1:
        raise ConfigError(
            f"config `global_batch_size` = {cfg.global_batch_size} is invalid: the training split has only "
            f"{len(data.train_idx)} rows; use a batch of at most that many"
        )
    return ds, data, spe


def preflight(args: argparse.Namespace, argv: list[str]) -> int:
    """Outside a launcher: validate everything, then exec DeepSpeed's launcher (or print it)."""
    cfg = resolve_config(args)
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc} is invalid: use 1 or more local ranks")
    ds, data, spe = validate(cfg, world_size=args.nproc, device=_device())
    ckpt_dir = cfg.run_dir / "checkpoints"
    from runtime.checkpoint import CheckpointError, candidates, find_latest_verified

    if not args.resume and candidates(ckpt_dir) and not args.dry_run:
        raise ConfigError(
            f"run {cfg.run_name!r} already has checkpoints in {ckpt_dir}; pass --resume to continue it "
            "or --run-name NEW to start a new run (nothing was deleted)"
        )
    if args.resume and not args.dry_run:
        # Sizes only here; rank 0 checks every hash again before anything is loaded.
        try:
            tag_dir = find_latest_verified(ckpt_dir, args.nproc, check_hashes=False)
        except CheckpointError as e:
            log.error("cannot resume: %s", e)
            return EXIT_NO_CHECKPOINT
        log.info("resuming from %s (newest complete checkpoint)", tag_dir)
    port = args.master_port or _free_port()
    forwarded = _strip_value_flags(argv, {"--nproc", "--master-port"})
    cmd = launcher_command(forwarded, args.nproc, port)
    log.info(
        "data %s: %d train / %d val rows, %d features; %d steps/epoch x %d epochs",
        cfg.data.source,
        len(data.train_idx),
        len(data.val_idx),
        data.num_features,
        spe,
        cfg.epochs,
    )
    if args.dry_run:
        print("DeepSpeed config:")
        print(json.dumps(ds, indent=2))
        print("command:")
        print(f"DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR', _device())} {shlex.join(cmd)}")
        return 0
    sys.stdout.flush()
    from runtime.train_signals import run_launcher

    return run_launcher(cmd)


def _strip_value_flags(argv: list[str], flags: set[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in flags):
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    under_launcher = args.local_rank is not None or "LOCAL_RANK" in os.environ
    try:
        if not under_launcher:
            return preflight(args, argv)
        from runtime.train_loop import run

        return run(resolve_config(args), resume=args.resume)
    except (ConfigError, DataError) as e:
        log.error("%s", e)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
