"""Copy a run's committed checkpoints from a training node to S3, in commit order.

`stratus remote` runs this on every training node after training (whatever training's exit
status, so that what was committed before a failure or a preemption still reaches S3):

    python -m runtime.checkpoint.sync --run-dir /scratch/runs/RUN --bucket CHECKPOINTS_BUCKET \\
        --prefix RUN/ --kms-key-id KEY_ARN --node-rank 0 --num-nodes 2 --launch-id ID

S3 mirrors the local layout (docs/architecture.md, "Checkpoint layout") under
`contract.checkpoints_uri(bucket, run)`. Node 0 uploads, oldest committed tag first, every file of
the tag, then its `manifest.json`, and `latest` last, only when the tag it names is complete in S3;
node k > 0 uploads its shards and a part record that node 0 merges into the manifest. A tag
without a verifying manifest was never committed and is skipped. SSE-KMS under the stack key; a
rerun skips what is already there. The protocol is `runtime.checkpoint.s3`; this module is the
node's command line. `stratus remote` builds it from `SyncOptions`
(`runtime.common.options.to_argv`).

Exit codes (docs/architecture.md): 0 synced (or nothing committed); 1 something was not synced (the message says
what); 2 bad arguments.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.checkpoint.local import candidates
from runtime.checkpoint.s3 import SyncError, Uploader, sync_committed, sync_node_part
from runtime.common.log import get_logger
from runtime.common.options import option, parse_options
from runtime.contract import ExitCode

PROG = "python -m runtime.checkpoint.sync"
log = get_logger()


@dataclass(kw_only=True)
class SyncOptions:
    """The options of `python -m runtime.checkpoint.sync` (run on each training node)."""

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
        args = parse_options(SyncOptions, argv, prog=PROG, description=__doc__)
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
