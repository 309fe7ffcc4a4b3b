"""Copy a run's committed checkpoints from a training node to S3, in commit order.

`stratus remote` runs this on every training node after training (whatever training's exit
status, so that what was committed before a failure or a preemption still reaches S3):

    python -m runtime.remote.sync --run-dir /scratch/runs/RUN --bucket CHECKPOINTS_BUCKET \\
        --prefix RUN/ --kms-key-id KEY_ARN --node-rank 0 --num-nodes 2 --launch-id ID

S3 mirrors the local layout (docs/architecture.md, "Checkpoint layout"): `<prefix><tag>/<file>`,
`<prefix><tag>/manifest.json`, `<prefix>latest`. Node 0 uploads, oldest committed tag first,
every file of the tag, then its `manifest.json`, and `latest` last, only when the tag it names
is complete in S3; a tag directory without a verifying manifest was never committed and is
skipped. Every object is written with SSE-KMS under the stack key (the bucket policy refuses
anything else) and carries its sha256 as metadata, so a rerun skips what is already there.

Several nodes: each ZeRO rank writes its shards to its own node's disk, and rank 0's manifest
hashes only node 0's files. Node k > 0 therefore uploads the files of each of its tags and then
a part record `<prefix>.parts/<tag>/node<k>.json` (sha256 + size per file, the launch id). Node 0
waits for the part of every other node from this launch, merges their files into the manifest it
uploads and checks that the RNG state of every rank is present, so a download of
`<prefix><tag>/` verifies as a whole with `runtime.train.checkpoint.verify_checkpoint`.

Exit codes (docs/architecture.md): 0 synced (or nothing committed); 1 something was not synced (the message says
what); 2 bad arguments.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.common.log import get_logger
from runtime.common.options import option, parse_options
from runtime.contract import ExitCode
from runtime.train.checkpoint import candidates
from runtime.train.ckpt_s3 import SyncError, Uploader, sync_committed, sync_node_part

__all__ = ["SyncError", "SyncOptions", "Uploader", "main", "sync_committed", "sync_node_part"]

log = get_logger()


@dataclass(kw_only=True)
class SyncOptions:
    """The options of `python -m runtime.remote.sync` (run on each training node)."""

    run_dir: Path = option(metavar="DIR")
    """Local run directory (holds checkpoints/)."""

    bucket: str = option(metavar="BUCKET")
    """Checkpoints bucket."""

    prefix: str = option(metavar="PREFIX")
    """Key prefix of the run, ending in / (e.g. RUN/)."""

    kms_key_id: str = option(metavar="KEY")
    """ARN of the stack KMS key (uploads use SSE-KMS)."""

    node_rank: int = option(0, metavar="N")
    """This node's rank (0 commits manifests and latest)."""

    num_nodes: int = option(1, metavar="N")
    """Nodes in the job."""

    launch_id: str = option("", metavar="ID")
    """Id of this launch; node 0 merges only parts carrying it."""

    wait_s: float = option(1800.0, metavar="SECONDS")
    """How long node 0 waits for the other nodes' parts."""

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            raise ValueError(f"--prefix {self.prefix!r} must end with / (e.g. {self.prefix}/)")
        if not 0 <= self.node_rank < self.num_nodes:
            raise ValueError(
                f"--node-rank {self.node_rank} is outside 0..{self.num_nodes - 1} (--num-nodes {self.num_nodes})"
            )


def main(argv: list[str] | None = None) -> int:
    """Entry on a node; returns an `ExitCode` (see the module docstring)."""
    try:
        args = parse_options(SyncOptions, argv, prog="python -m runtime.remote.sync", description=__doc__)
    except ValueError as e:
        log.error("%s", e)
        return ExitCode.BAD_INPUT
    ckpt_dir = args.run_dir / "checkpoints"
    if not candidates(ckpt_dir):
        log.info("no checkpoints in %s: nothing to sync", ckpt_dir)
        return ExitCode.OK
    import boto3
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    up = Uploader(boto3.client("s3"), args.bucket, args.prefix, args.kms_key_id)
    try:
        if args.node_rank > 0:
            tags = sync_node_part(up, ckpt_dir, node_rank=args.node_rank, launch_id=args.launch_id)
            log.info("node %d: uploaded its shards of %s", args.node_rank, ", ".join(tags))
        else:
            sync_committed(up, ckpt_dir, num_nodes=args.num_nodes, launch_id=args.launch_id, wait_s=args.wait_s)
    except SyncError as e:
        log.error("checkpoint sync incomplete: %s", e)
        return ExitCode.FAILED
    except (ClientError, BotoCoreError, Boto3Error) as e:
        log.error(
            "checkpoint sync to s3://%s/%s failed: %s (the trainer role may write only the checkpoints "
            "bucket, with SSE-KMS under the stack key)",
            args.bucket,
            args.prefix,
            e,
        )
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
