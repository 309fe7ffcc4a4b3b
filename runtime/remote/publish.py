"""Export a stack run from its checkpoints in S3 and publish the model, on training node 0.

`stratus remote --export` runs this on node 0 once every node succeeded:

    python -m runtime.remote.publish --run RUN --checkpoints-bucket BUCKET --models-bucket BUCKET \\
        --kms-key-id KEY_ARN [--model-name NAME]

S3 holds the only complete copy of a multi-node run (each node's scratch has only its own ranks'
shards), so the newest checkpoint of `s3://<checkpoints_bucket>/<run>/` whose merged manifest
verifies is downloaded into `<work-dir>/<run>/checkpoints/` (a checkpoint that does not verify is
skipped with a warning naming why), and `stratus export` runs on it with
`--publish s3://<models_bucket>/models --kms-key-id KEY_ARN`: the same stages and gate as a local
export, nothing published when the gate fails. The trainer role may publish models (and only under
`models/`); the serving host picks the new version up on its next poll of `<model>/LATEST`.

Exit codes (docs/architecture.md): export's: 0 published; 1 download, staging or publishing failed;
2 bad arguments or data; 3 no checkpoint in S3 verifies; 4 the gate failed (nothing published).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.common.log import get_logger
from runtime.common.options import option, parse_options
from runtime.contract import SCRATCH_MOUNT, ExitCode, model_name_problem, model_repository_uri

log = get_logger()


@dataclass(kw_only=True)
class PublishOptions:
    """The options of `python -m runtime.remote.publish` (run on training node 0)."""

    run: str = option(metavar="RUN")
    """Run name: its checkpoints are under s3://<checkpoints-bucket>/<run>/."""

    checkpoints_bucket: str = option(metavar="BUCKET")
    """The stack's checkpoints bucket."""

    models_bucket: str = option(metavar="BUCKET")
    """The stack's models bucket; the model is published to s3://<bucket>/models/<name>/<version>/."""

    kms_key_id: str = option(metavar="KEY")
    """ARN of the stack KMS key (every upload uses SSE-KMS with it)."""

    model_name: str | None = option(None, metavar="NAME")
    """Published model name (default: the run's preset); the serving host serves its stack's `model-name`."""

    work_dir: Path = option(Path(SCRATCH_MOUNT) / "exports", metavar="DIR")
    """Where the checkpoint is downloaded and the export staged (`<dir>/<run>/`)."""

    def __post_init__(self) -> None:
        if self.model_name and (problem := model_name_problem(self.model_name)):
            raise ValueError(f"--model-name: {problem}")
        if not self.run or "/" in self.run:
            raise ValueError(f"--run {self.run!r}: a run name, without /")


def export_args(opts: PublishOptions, tag: str) -> list[str]:
    """`stratus export` arguments for the downloaded checkpoint `tag`."""
    argv = [
        "--run-dir",
        str(opts.work_dir / opts.run),
        "--checkpoint",
        tag,
        "--publish",
        model_repository_uri(opts.models_bucket),
        "--kms-key-id",
        opts.kms_key_id,
    ]
    return argv + (["--model-name", opts.model_name] if opts.model_name else [])


def main(argv: list[str] | None = None) -> int:
    """Entry on node 0; returns an `ExitCode` (see the module docstring)."""
    try:
        opts = parse_options(PublishOptions, argv, prog="python -m runtime.remote.publish", description=__doc__)
    except ValueError as e:
        log.error("%s", e)
        return ExitCode.BAD_INPUT
    import boto3
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    from runtime.export.command import main as export_main
    from runtime.train.ckpt_s3 import download_newest

    ckpt_dir = opts.work_dir / opts.run / "checkpoints"
    source = f"s3://{opts.checkpoints_bucket}/{opts.run}/"
    try:
        tag_dir = download_newest(boto3.client("s3"), opts.checkpoints_bucket, f"{opts.run}/", ckpt_dir)
    except (ClientError, BotoCoreError, Boto3Error, OSError) as e:
        log.error("downloading the newest checkpoint of %s failed: %s", source, e)
        return ExitCode.FAILED
    if tag_dir is None:
        log.error("no checkpoint in %s verifies: nothing to export", source)
        return ExitCode.NO_CHECKPOINT
    log.info(
        "exporting %s (from %s) and publishing to %s", tag_dir.name, source, model_repository_uri(opts.models_bucket)
    )
    return export_main(export_args(opts, tag_dir.name))


if __name__ == "__main__":
    sys.exit(main())
