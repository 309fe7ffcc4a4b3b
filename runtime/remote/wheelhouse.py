"""The wheelhouse of `stratus remote --wheels DIR` as one content-addressed S3 object.

The directory's wheels are packed into a deterministic plain tar (wheels are zip files already:
compressing them again gains nothing; sorted names, fixed mtime and owner like the bundle), named
by its sha256: `s3://<models_bucket>/runtime/wheelhouse/<sha256>.tar`
(`runtime.contract.wheelhouse_key`). It is uploaded (SSE-KMS with the stack key, like every upload)
only when no object of that key and size is there yet, so a relaunch with the same wheels uploads
nothing of them. The runtime bundle carries only the manifest (`wheels.json`: the URI, sha256,
size and sorted wheel names), so the bundle's hash still changes with the wheelhouse; a host's
`prepare.sh` keys its venv by the wheel names and downloads the tar only when it rebuilds the
venv, checking its sha256 against the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.common.fsutil import sha256_file
from runtime.common.log import get_logger
from runtime.common.s3 import head_or_none, sse_kms_args
from runtime.contract import wheelhouse_key
from runtime.remote.bundle import BundleEntry, write_tar
from runtime.remote.outputs import RemoteError

log = get_logger()


class _Digest:
    """A write-only file that keeps the sha256 and the size of what is written to it."""

    def __init__(self) -> None:
        self.sha256, self.size = hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


@dataclass(frozen=True)
class Wheelhouse:
    """A `--wheels` directory and the tar it packs into."""

    directory: Path
    """The `--wheels` directory."""
    entries: tuple[BundleEntry, ...]
    """The wheels, by file name."""
    sha256: str
    """sha256 of the tar (its S3 key)."""
    size: int
    """Bytes of the tar."""

    @property
    def key(self) -> str:
        """Its key in the models bucket."""
        return wheelhouse_key(self.sha256)

    def uri(self, models_bucket: str) -> str:
        return f"s3://{models_bucket}/{self.key}"

    def manifest(self, models_bucket: str) -> bytes:
        """`wheels.json` of the bundle: what a host needs to fetch, verify and key its venv by."""
        doc = {
            "uri": self.uri(models_bucket),
            "sha256": self.sha256,
            "size": self.size,
            "wheels": [e.name for e in self.entries],
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    def describe(self) -> str:
        return f"{len(self.entries)} wheels, {self.size / 2**20:.1f} MiB"


def read_wheelhouse(directory: Path) -> Wheelhouse:
    """The wheelhouse of `directory` (its `*.whl`), hashed as the tar it uploads (nothing written).

    Raises:
        RemoteError: no wheel there.
    """
    wheels = sorted(directory.glob("*.whl")) if directory.is_dir() else []
    if not wheels:
        raise RemoteError(
            f"--wheels {directory}: no .whl files there (fill it with `stratus wheels --dest {directory}`)"
        )
    entries = tuple(BundleEntry(w.name, w, w.stat().st_size) for w in wheels)
    digest = _Digest()
    write_tar(entries, digest)
    return Wheelhouse(directory, entries, digest.sha256.hexdigest(), digest.size)


def write_wheelhouse(house: Wheelhouse, dest: Path) -> None:
    """Write the tar to `dest`.

    Raises:
        RemoteError: the wheels changed since they were read (the tar would not match its key).
    """
    changed = f"--wheels {house.directory} changed during the launch; relaunch once it is complete"
    try:
        with open(dest, "wb") as f:
            write_tar(house.entries, f)
    except OSError as e:  # a wheel removed or shortened since it was read
        raise RemoteError(f"{changed} ({e})") from e
    if sha256_file(dest) != (house.sha256, house.size):
        raise RemoteError(changed)


def stored(s3: Any, bucket: str, house: Wheelhouse) -> bool:
    """Whether the models bucket already holds this wheelhouse (its key, of its size)."""
    head = head_or_none(s3, bucket, house.key)
    return head is not None and head.get("ContentLength") == house.size


def upload(s3: Any, house: Wheelhouse, bucket: str, kms_key_arn: str, workdir: Path) -> bool:
    """Upload the wheelhouse unless it is there already; whether it was uploaded."""
    uri = house.uri(bucket)
    if stored(s3, bucket, house):
        log.info("wheelhouse already in %s (%s): not uploaded", uri, house.describe())
        return False
    tar = workdir / Path(house.key).name
    write_wheelhouse(house, tar)
    s3.upload_file(str(tar), bucket, house.key, ExtraArgs=sse_kms_args(kms_key_arn))
    tar.unlink()
    log.info("uploaded the wheelhouse (%s) to %s", house.describe(), uri)
    return True


def plan_line(house: Wheelhouse, bucket: str, s3_client: Callable[[], Any]) -> str:
    """The dry run's line for the wheelhouse: its URI, size, and whether a launch would upload it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        state = "already there: not uploaded" if stored(s3_client(), bucket, house) else "would be uploaded"
    except (ClientError, BotoCoreError) as e:
        state = f"uploaded unless already there (S3 could not say: {e})"
    return f"  wheelhouse   {house.uri(bucket)}  ({house.describe()}; {state})"
