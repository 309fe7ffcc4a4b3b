"""Checkpoints streamed to S3 while training runs.

On a stack's node (the node script exports the launch's checkpoint target, `runtime.common.nodeenv`),
local rank 0 of every node starts a `CheckpointStreamer`. After each commit (`Trainer.save`) it
queues the tag; a background thread uploads it (`runtime.checkpoint.s3`): node k > 0 its shards and
a part record, node 0 its files, the merged manifest once every part arrived, then `latest`, then
retention (`keep_checkpoints`) on S3. SSE-KMS under the stack key throughout. The queue is bounded:
a step waits at most `NodeEnv.upload_budget_s` (`STRATUS_UPLOAD_BUDGET_S`) for room, then the tag is
left to the next commit and to the sync after training (`python -m runtime.checkpoint.sync`). On exit
(done or preempted) the ranks wait for the queue to drain, so a committed checkpoint is in S3 before 75.

Without `NodeEnv.checkpoint_uri` (`STRATUS_CHECKPOINT_S3`) nothing here runs (local training).
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from runtime.checkpoint.local import LATEST, CheckpointError, verify_checkpoint
from runtime.checkpoint.s3 import S3Target, SyncError, apply_retention, upload_part, upload_tag
from runtime.common.log import get_logger
from runtime.common.nodeenv import NodeEnv

QUEUE_SIZE = 2
log = get_logger()


class CheckpointStreamer:
    """One node's uploader thread (see the module docstring). `submit` never blocks past the budget."""

    def __init__(self, target: S3Target, keep: int, *, budget_s: float = 2.0, wait_s: float = 600.0):
        self.target, self.keep, self.budget_s, self.wait_s = target, keep, budget_s, wait_s
        self.up = target.uploader()
        self.queue: queue.Queue[Path | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self.streamed: list[str] = []
        self.thread = threading.Thread(target=self._work, name="checkpoint-upload", daemon=True)
        self.thread.start()

    def submit(self, tag_dir: Path) -> None:
        try:
            self.queue.put(tag_dir, timeout=self.budget_s)
        except queue.Full:
            log.warning(
                "upload queue full after %.1f s: %s goes to S3 with a later checkpoint or the final sync",
                self.budget_s,
                tag_dir.name,
            )

    def _work(self) -> None:
        while (tag_dir := self.queue.get()) is not None:
            start = time.monotonic()
            try:
                self._upload(tag_dir)
            except (SyncError, CheckpointError, OSError) as e:
                log.warning("streaming %s to S3 failed (%s); the sync after training retries it", tag_dir.name, e)
                continue
            except Exception as e:  # boto3/botocore errors: training must go on
                log.warning(
                    "streaming %s to S3 failed (%s: %s); the sync after training retries it",
                    tag_dir.name,
                    type(e).__name__,
                    e,
                )
                continue
            self.streamed.append(tag_dir.name)
            log.info(
                "streamed %s to s3://%s/%s in %.1f s",
                tag_dir.name,
                self.up.bucket,
                self.up.prefix,
                time.monotonic() - start,
            )

    def _upload(self, tag_dir: Path) -> None:
        t = self.target
        if t.node_rank > 0:
            upload_part(self.up, tag_dir, node_rank=t.node_rank, launch_id=t.launch_id)
            return
        manifest = verify_checkpoint(tag_dir)
        upload_tag(self.up, tag_dir, manifest, num_nodes=t.num_nodes, launch_id=t.launch_id, wait_s=self.wait_s)
        self.up.blob(LATEST, tag_dir.name.encode())
        apply_retention(self.up, self.keep, tag_dir.name)

    def close(self, timeout_s: float = 600.0) -> None:
        """Wait until every queued checkpoint is uploaded (or `timeout_s` passes)."""
        try:
            self.queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("checkpoint uploads still queued after %.0f s; the sync after training retries them", timeout_s)
            return
        self.thread.join(timeout_s)


def streamer_for(keep: int, env: NodeEnv) -> CheckpointStreamer | None:
    """A streamer on local rank 0 of a node whose `env` names a checkpoint URI; else None."""
    target = S3Target.for_this_process(env)
    if target is None:
        return None
    log.info(
        "streaming checkpoints to s3://%s/%s (node %d of %d)",
        target.bucket,
        target.prefix,
        target.node_rank,
        target.num_nodes,
    )
    return CheckpointStreamer(target, keep, budget_s=env.upload_budget_s, wait_s=env.upload_wait_s)
