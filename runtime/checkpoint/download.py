"""Checkpoints back from S3: one tag downloaded and verified, the newest that verifies, and the
fetch before `--resume` on a node with empty (or stale) scratch.

A download lands in `<ckpt_dir>/.download-<tag>/` and is renamed to `<tag>/` only after it
verifies against its manifest (`runtime.checkpoint.local.verify_checkpoint`), so a cut-off or
damaged download never looks like a checkpoint. Used by training (`fetch_for_resume`, local rank 0
of each node, before the ranks resume) and by node 0's export (`runtime.remote.publish`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from runtime.checkpoint.local import LATEST, MANIFEST, CheckpointError, candidates, step_of, verify_checkpoint
from runtime.checkpoint.s3 import S3Target, s3_latest, s3_tags
from runtime.common.log import get_logger
from runtime.common.nodeenv import NodeEnv
from runtime.common.s3 import get_json_or_none

log = get_logger()


def download_tag(s3: Any, bucket: str, prefix: str, tag: str, ckpt_dir: Path) -> Path:
    """Download `<prefix><tag>/` into `ckpt_dir/<tag>` and verify it against its manifest.

    Raises:
        CheckpointError: no manifest, or a file that does not verify (naming it); nothing is left.
    """
    try:
        manifest = get_json_or_none(s3, bucket, f"{prefix}{tag}/{MANIFEST}")
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: a damaged manifest
        raise CheckpointError(f"s3://{bucket}/{prefix}{tag}/{MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"s3://{bucket}/{prefix}{tag}/: no {MANIFEST} (upload never completed)")
    partial = ckpt_dir / f".download-{tag}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for rel in manifest["files"]:
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise CheckpointError(f"s3://{bucket}/{prefix}{tag}/{MANIFEST} names {rel!r} outside the checkpoint")
            (partial / rel).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, f"{prefix}{tag}/{rel}", str(partial / rel))
        (partial / MANIFEST).write_text(json.dumps(manifest))
        verify_checkpoint(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    target = ckpt_dir / tag
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def download_newest(s3: Any, bucket: str, prefix: str, ckpt_dir: Path, newer_than: int = -1) -> Path | None:
    """The newest S3 checkpoint newer than step `newer_than` that verifies, downloaded into `ckpt_dir`.

    A checkpoint that does not verify is skipped with a warning naming why; None when none does.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for tag in s3_tags(s3, bucket, prefix):
        if step_of(tag) <= newer_than:
            return None
        try:
            path = download_tag(s3, bucket, prefix, tag, ckpt_dir)
        except CheckpointError as e:
            log.warning("skipping S3 checkpoint %s: %s", tag, e)
            continue
        log.info("downloaded s3://%s/%s%s/ (verified) to %s", bucket, prefix, tag, path)
        return path
    return None


def fetch_for_resume(ckpt_dir: Path, env: NodeEnv) -> Path | None:
    """Local rank 0: download the newest S3 checkpoint that verifies, when newer than any local one.

    Called by every rank before resuming (a barrier follows); returns the downloaded tag directory.
    Nothing happens without `env.checkpoint_uri` (local training) or on other local ranks.
    """
    target = S3Target.for_this_process(env)
    if target is None:
        return None
    s3 = target.uploader().s3
    if target.num_nodes > 1:
        _set_aside_unsynced(s3, target, ckpt_dir)
    local = -1
    for tag_dir in candidates(ckpt_dir):
        try:
            verify_checkpoint(tag_dir, check_hashes=False)
            local = step_of(tag_dir.name)
            break
        except CheckpointError:
            continue
    path = download_newest(s3, target.bucket, target.prefix, ckpt_dir, newer_than=local)
    if path is None and local < 0:
        log.warning("no checkpoint in s3://%s/%s verifies, and none here", target.bucket, target.prefix)
    return path


def _set_aside_unsynced(s3: Any, target: S3Target, ckpt_dir: Path) -> None:
    """Several nodes: S3's `latest` is the newest checkpoint every node has (its manifest merges all
    nodes' parts). A newer local tag may lack another node's shards (a node lost mid-upload), so it
    is renamed `<tag>.unsynced` (kept, ignored on resume) and every node resumes from the same one."""
    latest = s3_latest(s3, target.bucket, target.prefix)
    latest_step = step_of(latest or "")
    if latest_step is None:
        return
    for tag_dir in candidates(ckpt_dir):
        if step_of(tag_dir.name) > latest_step:
            log.warning(
                "%s is newer than s3://%s/%s%s (%s): set aside as %s.unsynced",
                tag_dir.name,
                target.bucket,
                target.prefix,
                LATEST,
                latest,
                tag_dir.name,
            )
            tag_dir.rename(tag_dir.with_name(f"{tag_dir.name}.unsynced"))
