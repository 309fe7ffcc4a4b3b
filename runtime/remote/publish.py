"""Export a stack run from its checkpoints in S3 and publish the model, on training node 0.

`stratus remote --export` runs this on node 0 once every node succeeded:

    python -m runtime.remote.publish --run RUN --checkpoints-bucket BUCKET --models-bucket BUCKET \\
        --kms-key-id KEY_ARN [--model-name NAME]

S3 holds the only complete copy of a multi-node run (each node's scratch has only its own ranks'
shards), so the newest checkpoint of `s3://<checkpoints_bucket>/<run>/` whose merged manifest
verifies is downloaded into `<work-dir>/<run>/checkpoints/` (a checkpoint that does not verify is
skipped with a warning naming why), and the export runs on it in this process
(`runtime.export.command.export`, publishing to `s3://<models_bucket>/models` with SSE-KMS under
KEY_ARN): the same stages and gate as a local export, nothing published when the gate fails.
`stratus remote --export` builds this command line from `PublishOptions` (`to_argv`). The
trainer role may publish models (and only under `models/`); the serving host picks the new
version up on its next poll of `<model>/LATEST`.

Exit codes (docs/architecture.md): export's: 0 published; 1 download, staging or publishing failed;
2 bad arguments or data; 3 no checkpoint in S3 verifies; 4 the gate failed (nothing published).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.common.log import get_logger
from runtime.common.options import option, parse_options
from runtime.contract import (
    SCRATCH_MOUNT,
    ExitCode,
    checkpoints_prefix,
    checkpoints_uri,
    model_name_problem,
    model_repository_uri,
)
from runtime.export.config import ExportConfig, ExportError

PROG = "python -m runtime.remote.publish"
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


def export_config(opts: PublishOptions, tag: str) -> ExportConfig:
    """The export of the downloaded checkpoint `tag`, published to the models bucket.

    Raises:
        ExportError: a value the export refuses (the message names it).
    """
    return ExportConfig(
        run_dir=opts.work_dir / opts.run,
        checkpoint=tag,
        publish=model_repository_uri(opts.models_bucket),
        kms_key_id=opts.kms_key_id,
        model_name=opts.model_name,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry on node 0; returns an `ExitCode` (see the module docstring)."""
    try:
        opts = parse_options(PublishOptions, argv, prog=PROG, description=__doc__)
    except ValueError as e:
        log.error("%s", e)
        return ExitCode.BAD_INPUT
    import boto3
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    from runtime.checkpoint.download import download_newest
    from runtime.export.command import export

    ckpt_dir = opts.work_dir / opts.run / "checkpoints"
    source = checkpoints_uri(opts.checkpoints_bucket, opts.run)
    try:
        tag_dir = download_newest(boto3.client("s3"), opts.checkpoints_bucket, checkpoints_prefix(opts.run), ckpt_dir)
    except (ClientError, BotoCoreError, Boto3Error, OSError) as e:
        log.error("downloading the newest checkpoint of %s failed: %s", source, e)
        return ExitCode.FAILED
    if tag_dir is None:
        log.error("no checkpoint in %s verifies: nothing to export", source)
        return ExitCode.NO_CHECKPOINT
    log.info(
        "exporting %s (from %s) and publishing to %s", tag_dir.name, source, model_repository_uri(opts.models_bucket)
    )
    try:
        cfg = export_config(opts, tag_dir.name)
    except ExportError as e:
        log.error("export failed: %s", e)
        return ExitCode.BAD_INPUT
    return export(cfg)  # in this process: the same stages, gate and exit codes as `stratus export`


if __name__ == "__main__":
    sys.exit(main())
