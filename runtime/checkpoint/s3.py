"""Checkpoints in S3: each node's shards and part record, node 0's merged manifest, `latest`; retention.

The layout mirrors the local one (docs/architecture.md, "Checkpoint layout"): `<prefix><tag>/<file>`,
`<prefix><tag>/manifest.json`, `<prefix>latest`. Every object is written with SSE-KMS under the
stack key and carries its sha256 as metadata, so a rerun skips what is already there.

Several nodes: each ZeRO rank writes its shards to its own node's disk, and rank 0's manifest
hashes only node 0's files. Node k > 0 therefore uploads the files of a tag and then a part
record `<prefix>.parts/<tag>/node<k>.json` (sha256 + size per file, the launch id). Node 0 waits
for the part of every other node from this launch, merges their files into the manifest it
uploads and checks that the RNG state of every rank is present, so a download of `<prefix><tag>/`
verifies as a whole with `runtime.checkpoint.local.verify_checkpoint`.

Used beside training (`runtime.checkpoint.stream`, after every commit) and after it
(`python -m runtime.checkpoint.sync`, whatever training's exit status); the way back is
`runtime.checkpoint.download`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.checkpoint.local import (
    LATEST,
    MANIFEST,
    CheckpointError,
    candidates,
    hash_files,
    step_of,
    verify_checkpoint,
)
from runtime.common.log import get_logger
from runtime.common.nodeenv import NodeEnv
from runtime.common.s3 import child_names, delete_prefix, get_json_or_none, head_or_none, parse_s3_uri, sse_kms_args

PART_FORMAT = "stratus-checkpoint-part/1"
PARTS_DIR = ".parts"
log = get_logger()


class SyncError(RuntimeError):
    """A checkpoint could not be synced; the message names the tag, the node or the object."""


class Uploader:
    """Puts files and small objects under `s3://bucket/prefix`, SSE-KMS, sha256 in the metadata.

    Args:
        s3: a boto3 S3 client (or anything with its `upload_file`, `put_object`, `head_object`,
            `get_object`).
        bucket, prefix: destination; `prefix` is empty or ends with "/".
        kms_key_arn: the stack key.
    """

    def __init__(self, s3: Any, bucket: str, prefix: str, kms_key_arn: str):
        self.s3, self.bucket, self.prefix, self.kms = s3, bucket, prefix, kms_key_arn
        self.uploaded: list[str] = []

    def file(self, key: str, path: Path, sha256: str, size: int) -> None:
        """Upload `path` to `<prefix><key>` unless an object of that size and sha256 is there."""
        full = self.prefix + key
        head = head_or_none(self.s3, self.bucket, full)
        if head and head.get("ContentLength") == size and head.get("Metadata", {}).get("sha256") == sha256:
            return
        extra = {**sse_kms_args(self.kms), "Metadata": {"sha256": sha256}}
        self.s3.upload_file(str(path), self.bucket, full, ExtraArgs=extra)
        self.uploaded.append(full)

    def blob(self, key: str, data: bytes) -> None:
        """Put `data` at `<prefix><key>` (always: manifests, parts and `latest` are small)."""
        import hashlib

        full = self.prefix + key
        meta = {"sha256": hashlib.sha256(data).hexdigest()}
        self.s3.put_object(Bucket=self.bucket, Key=full, Body=data, Metadata=meta, **sse_kms_args(self.kms))
        self.uploaded.append(full)


@dataclass(frozen=True, kw_only=True)
class S3Target:
    """Where this node's checkpoints go in S3, from its `NodeEnv` (the node script's exports)."""

    bucket: str
    prefix: str
    kms_key_arn: str
    node_rank: int
    num_nodes: int
    launch_id: str

    @classmethod
    def for_this_process(cls, env: NodeEnv) -> S3Target | None:
        """The target on local rank 0 of a node whose env names a checkpoint URI; else None.

        Only local rank 0 (DeepSpeed's `LOCAL_RANK`) of each node streams and downloads.
        """
        if not env.checkpoint_uri or int(os.environ.get("LOCAL_RANK", "0")) != 0:
            return None
        bucket, prefix = parse_s3_uri(env.checkpoint_uri)
        return cls(
            bucket=bucket,
            prefix=prefix if prefix.endswith("/") or not prefix else prefix + "/",
            kms_key_arn=env.kms_key_arn,
            node_rank=env.node_rank,
            num_nodes=env.num_nodes,
            launch_id=env.launch_id,
        )

    def uploader(self) -> Uploader:
        import boto3

        return Uploader(boto3.client("s3"), self.bucket, self.prefix, self.kms_key_arn)


def upload_part(up: Uploader, tag_dir: Path, *, node_rank: int, launch_id: str) -> None:
    """Node k > 0: upload the files of one tag, then its part record."""
    files = hash_files(tag_dir)
    for rel, meta in files.items():
        up.file(f"{tag_dir.name}/{rel}", tag_dir / rel, meta["sha256"], meta["size"])
    part = {"format": PART_FORMAT, "tag": tag_dir.name, "node_rank": node_rank, "launch_id": launch_id}
    up.blob(f"{PARTS_DIR}/{tag_dir.name}/node{node_rank}.json", json.dumps({**part, "files": files}).encode())


def s3_latest(s3: Any, bucket: str, prefix: str) -> str | None:
    """The tag `<prefix>latest` names in S3, or None when there is none (or it is unreadable)."""
    from botocore.exceptions import ClientError

    try:
        return s3.get_object(Bucket=bucket, Key=f"{prefix}{LATEST}")["Body"].read().decode().strip()
    except ClientError:
        return None


def _s3_latest_step(up: Uploader) -> int:
    step = step_of(s3_latest(up.s3, up.bucket, up.prefix) or "")
    return -1 if step is None else step


def sync_node_part(up: Uploader, ckpt_dir: Path, *, node_rank: int, launch_id: str) -> list[str]:
    """Node k > 0: upload the files of every tag, then its part record. Returns the tags sent.

    A tag older than S3's `latest` and without a manifest there was removed by retention on S3
    (or superseded): not sent again.
    """
    sent = []
    latest = _s3_latest_step(up)
    for tag_dir in reversed(candidates(ckpt_dir)):  # oldest first
        step = step_of(tag_dir.name)
        if step < latest and head_or_none(up.s3, up.bucket, f"{up.prefix}{tag_dir.name}/{MANIFEST}") is None:
            continue
        upload_part(up, tag_dir, node_rank=node_rank, launch_id=launch_id)
        sent.append(tag_dir.name)
    return sent


def _wait_parts(
    up: Uploader, tag: str, num_nodes: int, launch_id: str, wait_s: float, sleep: Callable[[float], None]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + wait_s
    while True:
        parts, missing = [], []
        for k in range(1, num_nodes):
            part = get_json_or_none(up.s3, up.bucket, f"{up.prefix}{PARTS_DIR}/{tag}/node{k}.json")
            if part and part.get("format") == PART_FORMAT and part.get("launch_id") == launch_id:
                parts.append(part)
            else:
                missing.append(k)
        if not missing:
            return parts
        if time.monotonic() >= deadline:
            raise SyncError(
                f"checkpoint {tag}: node(s) {', '.join(map(str, missing))} did not upload their shards within "
                f"{wait_s:.0f} s (see their command output); the tag stays uncommitted in S3"
            )
        sleep(1.0)


def merged_manifest(manifest: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Node 0's manifest plus the files of the other nodes' parts; checks every rank is present.

    Raises:
        SyncError: two nodes hold the same file, or some rank's RNG state is in no part.
    """
    files = dict(manifest["files"])
    for part in parts:
        for rel, meta in part["files"].items():
            if rel in files and files[rel] != meta:
                raise SyncError(
                    f"checkpoint {manifest['tag']}: {rel} differs between node 0 and node {part['node_rank']}"
                )
            files[rel] = meta
    world = manifest.get("world_size")
    if isinstance(world, int):
        absent = [r for r in range(world) if f"rng/rank{r}.json" not in files]
        if absent:
            raise SyncError(
                f"checkpoint {manifest['tag']}: no files of rank(s) {absent[:8]} on any node; "
                "was the node count of this launch different from the one that trained?"
            )
    return {**manifest, "files": files}


def _already_synced(up: Uploader, tag: str, manifest: dict[str, Any]) -> bool:
    remote = get_json_or_none(up.s3, up.bucket, f"{up.prefix}{tag}/{MANIFEST}")
    if (
        not remote
        or remote.get("step") != manifest.get("step")
        or remote.get("world_size") != manifest.get("world_size")
    ):
        return False
    return all(remote.get("files", {}).get(rel) == meta for rel, meta in manifest["files"].items())


def upload_tag(
    up: Uploader,
    tag_dir: Path,
    manifest: dict[str, Any],
    *,
    num_nodes: int = 1,
    launch_id: str = "",
    wait_s: float = 1800.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Node 0: one verified tag's files, the other nodes' parts merged, then its manifest.

    Raises:
        SyncError: a node's part did not arrive in `wait_s`, or the parts do not fit together.
    """
    tag = tag_dir.name
    if num_nodes > 1 and _already_synced(up, tag, manifest):
        return
    for rel, meta in sorted(manifest["files"].items()):
        up.file(f"{tag}/{rel}", tag_dir / rel, meta["sha256"], meta["size"])
    if num_nodes > 1:
        manifest = merged_manifest(manifest, _wait_parts(up, tag, num_nodes, launch_id, wait_s, sleep))
    up.blob(f"{tag}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
    log.info("synced %s to s3://%s/%s%s/", tag, up.bucket, up.prefix, tag)


def sync_committed(
    up: Uploader,
    ckpt_dir: Path,
    *,
    num_nodes: int = 1,
    launch_id: str = "",
    wait_s: float = 1800.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Node 0: upload each committed tag (files, then manifest), then `latest`. Returns synced tags.

    Raises:
        SyncError: listing every tag that was not synced; `latest` is then uploaded only if the
            tag it names was synced, so S3 never points at an incomplete checkpoint.
    """
    synced, errors = [], []
    for tag_dir in reversed(candidates(ckpt_dir)):  # oldest first: commit order
        tag = tag_dir.name
        if not (tag_dir / MANIFEST).is_file():
            log.warning("skipping %s: no %s (never committed)", tag, MANIFEST)
            continue
        try:
            manifest = verify_checkpoint(tag_dir)
        except CheckpointError as e:
            log.warning("skipping %s: %s", tag, e)
            errors.append(f"{tag}: {e}")
            continue
        try:
            upload_tag(up, tag_dir, manifest, num_nodes=num_nodes, launch_id=launch_id, wait_s=wait_s, sleep=sleep)
        except SyncError as e:
            errors.append(str(e))
            continue
        synced.append(tag)
    latest_path = ckpt_dir / LATEST
    latest = latest_path.read_text().strip() if latest_path.is_file() else ""
    if latest and latest in synced:
        up.blob(LATEST, latest.encode())
        log.info("s3://%s/%s%s -> %s", up.bucket, up.prefix, LATEST, latest)
    elif latest:
        errors.append(f"{LATEST} names {latest}, which was not synced; s3://{up.bucket}/{up.prefix}{LATEST} unchanged")
    if errors:
        raise SyncError("; ".join(errors))
    return synced


def s3_tags(s3: Any, bucket: str, prefix: str) -> list[str]:
    """Checkpoint tags under `s3://bucket/prefix`, newest step first."""
    tags = {name for name in child_names(s3, bucket, prefix) if step_of(name) is not None}
    return sorted(tags, key=step_of, reverse=True)


def apply_retention(up: Uploader, keep: int, newest: str) -> list[str]:
    """Delete S3 checkpoints older than the `keep` newest committed ones (never `newest`).

    A tag without a manifest that is older than `newest` is an upload cut off by a failure:
    deleted too. Returns the deleted tags.
    """
    kept, deleted = 0, []
    newest_step = step_of(newest)
    for tag in s3_tags(up.s3, up.bucket, up.prefix):
        committed = head_or_none(up.s3, up.bucket, f"{up.prefix}{tag}/{MANIFEST}") is not None
        if tag == newest or (committed and kept < keep):
            kept += committed
            continue
        if step_of(tag) > newest_step:
            continue
        delete_prefix(up.s3, up.bucket, f"{up.prefix}{tag}/")
        delete_prefix(up.s3, up.bucket, f"{up.prefix}{PARTS_DIR}/{tag}/")
        deleted.append(tag)
    if deleted:
        log.info("retention: deleted %s from s3://%s/%s", ", ".join(deleted), up.bucket, up.prefix)
    return deleted
