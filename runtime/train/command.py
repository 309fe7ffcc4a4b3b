"""`stratus train`: train a preset with DeepSpeed ZeRO data parallelism (CPU offload on CPU machines).

Runbook:
    # validate config and data, print the DeepSpeed config and the launch command, start nothing
    stratus train --preset mlp-binary --nproc 2 --dry-run
    # launch 2 local ranks through DeepSpeed's own launcher (what scripts/launch.sh does)
    DS_ACCELERATOR=cpu stratus train --preset mlp-binary --nproc 2 --set parallel.zero_stage=3
    # the same, calling the launcher yourself
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module runtime.train --preset mlp-binary
    # continue from the newest verified checkpoint of the run
    stratus train --run-name mlp-binary --resume

(`python -m runtime train ...` is the same command without the console script.)
Outputs in runs/<run-name>/: checkpoints/, metrics.csv, training.png, summary.json.
Exit codes (docs/architecture.md): 0 done; 2 bad config, data or arguments; 3 no checkpoint
verifies for --resume; 75 preempted by SIGTERM/SIGINT after committing a checkpoint (rerun with
--resume to continue).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Any

from runtime.common.log import get_logger
from runtime.common.net import free_port
from runtime.common.options import option, parse_options, to_argv
from runtime.contract import ExitCode
from runtime.train.config import ConfigError, TrainConfig
from runtime.train.data import DataError, Dataset, check_batch_fits
from runtime.train.deepspeed_config import deepspeed_config
from runtime.train.loading import load_config

log = get_logger()
PROG = "stratus train"


@dataclass(kw_only=True)
class TrainOptions:
    """The options of `stratus train`; `runtime.remote` rebuilds the nodes' command line from them."""

    preset: str = option("mlp-binary", metavar="NAME")
    """Named preset to start from (mlp-binary, mlp-large, gpt-tiny, gpt-small, gpt-350m, gpt-1.3b,
    hf-tiny, hf-1b-g5, hf-8b-p5)."""

    config: str | None = option(None, metavar="FILE")
    """YAML/JSON file overriding preset fields (unknown keys are errors)."""

    overrides: tuple[str, ...] = option((), flag="--set", metavar="KEY=VALUE")
    """Override one field, e.g. --set parallel.zero_stage=3 --set epochs=2 (repeatable)."""

    run_name: str | None = option(None, metavar="NAME")
    """Run directory name under output_dir (default: the preset's)."""

    model_dir: str | None = option(None, metavar="PATH")
    """Hugging Face model directory to fine-tune (sets model.model_dir; hf-* presets): a local
    path or s3://bucket/prefix/ (`stratus model push` uploads one)."""

    data: str | None = option(None, metavar="PATH")
    """Dataset (sets data.source): a .npz/.csv path or s3://bucket/key; for gpt presets a directory
    of text files, a .txt/.jsonl file or s3://bucket/prefix/; for hf presets a .jsonl of text or chat
    lines."""

    resume: bool = False
    """Continue from the newest verified checkpoint of the run."""

    nproc: int = option(2, metavar="N")
    """Local ranks to launch (ignored under a launcher)."""

    master_port: int = option(0, metavar="PORT")
    """Rendezvous port (0: pick a free one)."""

    dry_run: bool = False
    """Validate, print the DeepSpeed config and the command, and exit."""

    local_rank: int | None = option(None, flag="--local_rank", hidden=True)
    """Set by DeepSpeed's launcher in each rank."""

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ConfigError(f"--nproc {self.nproc} is invalid: use 1 or more local ranks")
        if not 0 <= self.master_port < 65536:
            raise ConfigError(f"--master-port {self.master_port} is invalid: use 0 (any free port) or 1-65535")

    def train_config(self) -> TrainConfig:
        """The preset, then `--config`, then each `--set`, then `--run-name`/`--data`, validated once."""
        overrides = list(self.overrides)
        if self.run_name:
            overrides.append(f"run_name={self.run_name}")
        if self.model_dir:
            overrides.append(f"model.model_dir={json.dumps(self.model_dir)}")
        if self.data:
            overrides.append(f"data.source={json.dumps(self.data)}")
        return load_config(self.preset, config_file=self.config, overrides=overrides)


def parse_train_options(argv: list[str] | None) -> TrainOptions:
    """Parse `stratus train` arguments (argparse exits 2 on a usage error)."""
    return parse_options(TrainOptions, argv, prog=PROG, description=__doc__)


def encode_world_info(hosts: list[str], slots_per_node: int) -> str:
    """DeepSpeed's `--world_info`: urlsafe base64 of the JSON `{host: [0, .., slots-1], ..}`.

    The same encoding as `deepspeed.launcher.runner.encode_world_info`. `deepspeed.launcher.launch`
    decodes it and takes key number `--node_rank` as its own node, so the key order is the node
    order and global ranks are numbered host by host in that order.
    """
    info = {host: list(range(slots_per_node)) for host in hosts}
    return base64.urlsafe_b64encode(json.dumps(info).encode("utf-8")).decode("utf-8")


def launcher_command(argv: list[str], nproc: int, master_port: int) -> list[str]:
    """DeepSpeed's per-node launcher running `runtime.train` on `nproc` local ranks with `argv`.

    `deepspeed.launcher.launch` is what DeepSpeed's `deepspeed` command (`launcher.runner`) runs
    for a one-node job, with the same arguments; calling it directly saves the runner's own
    process (an interpreter that imports DeepSpeed: about 3 s per launch). The stack's nodes run
    the same launcher (`runtime.remote.nodes`)."""
    return [
        sys.executable,
        "-u",
        "-m",
        "deepspeed.launcher.launch",
        f"--world_info={encode_world_info(['localhost'], nproc)}",
        "--node_rank=0",
        "--master_addr=127.0.0.1",
        f"--master_port={master_port}",
        "--module",
        "runtime.train",
        *argv,
    ]


def device_kind() -> str:
    """ "cuda" or "cpu": DS_ACCELERATOR when set, else whether torch sees a CUDA device."""
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
    from runtime.train.families import family_of  # here: `--help` loads no torch

    data = family_of(cfg).task(cfg).load_data()  # as the ranks' task will load it
    return ds, data, check_batch_fits(cfg.global_batch_size, len(data.train_idx))


def preflight(opts: TrainOptions) -> ExitCode | int:
    """Outside a launcher: validate everything, then run DeepSpeed's launcher (or print it)."""
    from runtime.checkpoint import local as checkpoint
    from runtime.train.families import family_of

    cfg = opts.train_config()
    ds, data, spe = validate(cfg, world_size=opts.nproc, device=device_kind())
    ckpt_dir = cfg.run_dir / "checkpoints"
    if not opts.resume and not opts.dry_run and (problem := checkpoint.existing_run_problem(ckpt_dir, cfg.run_name)):
        raise ConfigError(problem)
    if opts.resume and not opts.dry_run:
        # Sizes only here; rank 0 checks every hash again before anything is loaded.
        try:
            tag_dir = checkpoint.find_latest_verified(ckpt_dir, opts.nproc, check_hashes=False)
        except checkpoint.CheckpointError as e:
            log.error("cannot resume: %s", e)
            return ExitCode.NO_CHECKPOINT
        log.info("resuming from %s (newest complete checkpoint)", tag_dir)
    port = opts.master_port or free_port()
    cmd = launcher_command(to_argv(opts, skip=("nproc", "master_port", "dry_run")), opts.nproc, port)
    log.info(
        "data %s: %d train / %d val %s; %d steps/epoch x %d epochs",
        cfg.data.source,
        len(data.train_idx),
        len(data.val_idx),
        family_of(cfg).task(cfg).data_line(data),
        spe,
        cfg.epochs,
    )
    if opts.dry_run:
        print("DeepSpeed config:")
        print(json.dumps(ds, indent=2))
        print("command:")
        print(f"DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR', device_kind())} {shlex.join(cmd)}")
        return ExitCode.OK
    log.info("starting DeepSpeed's launcher: %s", shlex.join(cmd))
    sys.stdout.flush()
    from runtime.train.shm import release_launch_buffers
    from runtime.train.signals import run_launcher

    try:
        return run_launcher(cmd)
    finally:
        if left := release_launch_buffers(port, opts.nproc):  # ranks that died before unlinking theirs
            log.info("removed %d shared-memory buffer(s) left in /dev/shm by ranks that did not finish", len(left))


def main(argv: list[str] | None = None) -> int:
    """Entry of `stratus train` and of each rank (`python -m runtime.train` under the launcher)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = parse_train_options(argv)
        if opts.local_rank is None and "LOCAL_RANK" not in os.environ:
            return int(preflight(opts))
        from runtime.train.loop import run

        return int(run(opts.train_config(), resume=opts.resume))
    except (ConfigError, DataError) as e:
        log.error("%s", e)
        return ExitCode.BAD_INPUT
