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

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.common.log import get_logger
from runtime.common.options import option, parse_options
from runtime.common.s3 import get_json_or_none, head_or_none, sse_kms_args
from runtime.contract import ExitCode
from runtime.train.checkpoint import LATEST, MANIFEST, CheckpointError, candidates, hash_files, verify_checkpoint

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


def sync_node_part(up: Uploader, ckpt_dir: Path, *, node_rank: int, launch_id: str) -> list[str]:
    """Node k > 0: upload the files of every tag, then its part record. Returns the tags sent."""
    sent = []
    for tag_dir in reversed(candidates(ckpt_dir)):  # oldest first
        files = hash_files(tag_dir)
        for rel, meta in files.items():
            up.file(f"{tag_dir.name}/{rel}", tag_dir / rel, meta["sha256"], meta["size"])
        part = {"format": PART_FORMAT, "tag": tag_dir.name, "node_rank": node_rank, "launch_id": launch_id}
        up.blob(f"{PARTS_DIR}/{tag_dir.name}/node{node_rank}.json", json.dumps({**part, "files": files}).encode())
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
        sleep(5.0)


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
        if num_nodes > 1 and _already_synced(up, tag, manifest):
            synced.append(tag)
            continue
        try:
            for rel, meta in sorted(manifest["files"].items()):
                up.file(f"{tag}/{rel}", tag_dir / rel, meta["sha256"], meta["size"])
            if num_nodes > 1:
                manifest = merged_manifest(manifest, _wait_parts(up, tag, num_nodes, launch_id, wait_s, sleep))
            up.blob(f"{tag}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
        except SyncError as e:
            errors.append(str(e))
            continue
        synced.append(tag)
        log.info("synced %s to s3://%s/%s%s/", tag, up.bucket, up.prefix, tag)
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
        log.error("checkpoint sync to s3://%s/%s failed: %s (the trainer role may write only the checkpoints "
                  "bucket, with SSE-KMS under the stack key)", args.bucket, args.prefix, e)  # fmt: skip
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
