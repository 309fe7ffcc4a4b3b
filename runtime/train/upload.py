"""Checkpoints streamed to S3 while training runs, and fetched back for `--resume` on empty scratch.

On a stack's node (`runtime.remote.nodes` exports the variables below), local rank 0 of every
node starts a `CheckpointStreamer`. After each commit (`Trainer.save`) it queues the tag; a
background thread uploads it (`runtime.train.ckpt_s3`): node k > 0 its shards and a part record,
node 0 its files, the merged manifest once every part arrived, then `latest`, then retention
(`keep_checkpoints`) on S3. SSE-KMS under the stack key throughout. The queue is bounded: a
step waits at most `STRATUS_UPLOAD_BUDGET_S` seconds for room, then the tag is left to the next
commit and to the sync after training (`python -m runtime.remote.sync`). On exit (done or
preempted) the ranks wait for the queue to drain, so a committed checkpoint is in S3 before 75.

Without `STRATUS_CHECKPOINT_S3` nothing here runs (local training).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.common.log import get_logger
from runtime.common.s3 import parse_s3_uri
from runtime.train.checkpoint import LATEST, CheckpointError, candidates, step_of, verify_checkpoint
from runtime.train.ckpt_s3 import SyncError, Uploader, apply_retention, download_newest, upload_part, upload_tag

ENV_URI = "STRATUS_CHECKPOINT_S3"
"""s3://<checkpoints_bucket>/<run>/: where this node streams its checkpoints."""
ENV_KMS = "STRATUS_KMS_KEY_ARN"
ENV_NODE_RANK = "STRATUS_NODE_RANK"
ENV_NUM_NODES = "STRATUS_NUM_NODES"
ENV_LAUNCH_ID = "STRATUS_LAUNCH_ID"
ENV_BUDGET = "STRATUS_UPLOAD_BUDGET_S"
"""Seconds a step may wait for room in the upload queue (default 2)."""
ENV_WAIT = "STRATUS_UPLOAD_WAIT_S"
"""Seconds node 0 waits for the other nodes' parts of a tag (default 600)."""
QUEUE_SIZE = 2
log = get_logger()


@dataclass(frozen=True, kw_only=True)
class StreamTarget:
    bucket: str
    prefix: str
    kms_key_arn: str
    node_rank: int
    num_nodes: int
    launch_id: str
    budget_s: float
    wait_s: float

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StreamTarget | None:
        env = dict(os.environ if env is None else env)
        if not env.get(ENV_URI):
            return None
        bucket, prefix = parse_s3_uri(env[ENV_URI])
        return cls(
            bucket=bucket,
            prefix=prefix if prefix.endswith("/") or not prefix else prefix + "/",
            kms_key_arn=env.get(ENV_KMS, ""),
            node_rank=int(env.get(ENV_NODE_RANK, "0")),
            num_nodes=int(env.get(ENV_NUM_NODES, "1")),
            launch_id=env.get(ENV_LAUNCH_ID, ""),
            budget_s=float(env.get(ENV_BUDGET, "2")),
            wait_s=float(env.get(ENV_WAIT, "600")),
        )

    def uploader(self) -> Uploader:
        import boto3

        return Uploader(boto3.client("s3"), self.bucket, self.prefix, self.kms_key_arn)


class CheckpointStreamer:
    """One node's uploader thread (see the module docstring). `submit` never blocks past the budget."""

    def __init__(self, target: StreamTarget, keep: int):
        self.target, self.keep = target, keep
        self.up = target.uploader()
        self.queue: queue.Queue[Path | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self.streamed: list[str] = []
        self.thread = threading.Thread(target=self._work, name="checkpoint-upload", daemon=True)
        self.thread.start()

    def submit(self, tag_dir: Path) -> None:
        try:
            self.queue.put(tag_dir, timeout=self.target.budget_s)
        except queue.Full:
            log.warning(
                "upload queue full after %.1f s: %s goes to S3 with a later checkpoint or the final sync",
                self.target.budget_s,
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
        upload_tag(self.up, tag_dir, manifest, num_nodes=t.num_nodes, launch_id=t.launch_id, wait_s=t.wait_s)
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


def streamer_for(keep: int) -> CheckpointStreamer | None:
    """A streamer on local rank 0 of a node with `STRATUS_CHECKPOINT_S3` set; else None."""
    target = StreamTarget.from_env()
    if target is None or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return None
    log.info(
        "streaming checkpoints to s3://%s/%s (node %d of %d)",
        target.bucket,
        target.prefix,
        target.node_rank,
        target.num_nodes,
    )
    return CheckpointStreamer(target, keep)


def fetch_for_resume(ckpt_dir: Path) -> Path | None:
    """Local rank 0: download the newest S3 checkpoint that verifies, when newer than any local one.

    Called by every rank before resuming (a barrier follows); returns the downloaded tag directory.
    """
    target = StreamTarget.from_env()
    if target is None or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return None
    up: Any = target.uploader()
    if target.num_nodes > 1:
        _set_aside_unsynced(up, ckpt_dir)
    local = -1
    for tag_dir in candidates(ckpt_dir):
        try:
            verify_checkpoint(tag_dir, check_hashes=False)
            local = step_of(tag_dir.name)
            break
        except CheckpointError:
            continue
    path = download_newest(up.s3, target.bucket, target.prefix, ckpt_dir, newer_than=local)
    if path is None and local < 0:
        log.warning("no checkpoint in s3://%s/%s verifies, and none here", target.bucket, target.prefix)
    return path


def _set_aside_unsynced(up: Uploader, ckpt_dir: Path) -> None:
    """Several nodes: S3's `latest` is the newest checkpoint every node has (its manifest merges all
    nodes' parts). A newer local tag may lack another node's shards (a node lost mid-upload), so it
    is renamed `<tag>.unsynced` (kept, ignored on resume) and every node resumes from the same one."""
    from botocore.exceptions import ClientError

    try:
        latest = up.s3.get_object(Bucket=up.bucket, Key=f"{up.prefix}{LATEST}")["Body"].read().decode().strip()
    except ClientError:
        return
    latest_step = step_of(latest)
    if latest_step is None:
        return
    for tag_dir in candidates(ckpt_dir):
        if step_of(tag_dir.name) > latest_step:
            log.warning(
                "%s is newer than s3://%s/%s%s (%s): set aside as %s.unsynced",
                tag_dir.name,
                up.bucket,
                up.prefix,
                LATEST,
                latest,
                tag_dir.name,
            )
            tag_dir.rename(tag_dir.with_name(f"{tag_dir.name}.unsynced"))
