"""Model repository storage: a local directory or `s3://bucket/prefix`, behind one small API.

Used by `runtime.repository.publish` (write a version, then LATEST) and `runtime.serve.model` (read LATEST, fetch a
version into a local directory that is then verified). Keys are relative to the repository root,
e.g. `mlp-binary/3/model.onnx`. S3 is reached through boto3 with the standard environment
(credentials chain, `AWS_ENDPOINT_URL`), so tests can point it at a local emulator.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from runtime.common.fsutil import atomic_write, sha256_file
from runtime.common.s3 import child_names, delete_prefix, parse_s3_uri, sse_kms_args
from runtime.repository.artifact import MANIFEST, ArtifactError, check_relpath

log = logging.getLogger("stratus.repo")

LATEST = "LATEST"
MAX_FETCH_BYTES = 8 << 30  # refuse to download a "version" bigger than this (8 GiB)
MAX_VERSION_DIGITS = 18
"""A version number has at most this many ASCII digits (fits an int64); LATEST is read up to a
few bytes more than that, never whole."""
_LATEST_READ_BYTES = MAX_VERSION_DIGITS + 8


class PublishError(RuntimeError):
    """Uploading, verifying or reading the repository failed; the message says what and where."""


def is_version_name(name: str) -> bool:
    """Whether `name` is a version number as written by publish: 1 to MAX_VERSION_DIGITS ASCII
    digits (`str.isdigit` alone also accepts superscripts and other digits that `int` refuses)."""
    return 0 < len(name) <= MAX_VERSION_DIGITS and name.isascii() and name.isdigit()


def _parse_version(data: bytes, where: str) -> int:
    """The version LATEST names. Its content is never quoted in the error: a LATEST that is not a
    version number may be anything (a link to a secret, say), so only its size is reported."""
    value = data.strip(b" \t\r\n")
    text = value.decode("ascii", errors="replace")
    if not is_version_name(text) or int(text) < 1:
        size = f"{len(data)}{'+' if len(data) >= _LATEST_READ_BYTES else ''} bytes"
        raise PublishError(
            f"{where}: holds {size}, not a positive version number (1 to {MAX_VERSION_DIGITS} ASCII digits); "
            "publish again to rewrite it"
        )
    return int(text)


class LocalRepo:
    """A model repository in a local directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.uri = str(root)

    def versions(self, model: str) -> list[int]:
        """Integer-named version directories of `model`, sorted."""
        model_dir = self.root / model
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if is_version_name(p.name))

    def read_latest(self, model: str) -> int | None:
        """The version LATEST names (None: no LATEST). Raises PublishError for a LATEST that is a
        symlink or not a version number."""
        path = self.root / model / LATEST
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            if path.is_symlink():
                raise PublishError(f"{path}: is a symlink; publish writes LATEST as a file") from None
            raise PublishError(f"{path}: cannot be read ({e.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            data = f.read(_LATEST_READ_BYTES)
        return _parse_version(data, str(path))

    def next_version(self, model: str) -> int:
        return max([0, self.read_latest(model) or 0, *self.versions(model)]) + 1

    def claim_version(self, model: str) -> int:
        """Create the next version directory exclusively (safe against a concurrent publisher)."""
        (self.root / model).mkdir(parents=True, exist_ok=True)
        version = self.next_version(model)
        while True:
            try:
                (self.root / model / str(version)).mkdir()
                return version
            except FileExistsError:
                version += 1

    def delete_version(self, model: str, version: int) -> None:
        """Remove a failed version's directory (LATEST never points at it)."""
        shutil.rmtree(self.root / model / str(version), ignore_errors=True)

    def verify_object(self, key: str, sha256: str, size: int) -> None:
        """Raise PublishError unless the file at `key` has this size and sha256."""
        path = self.root / key
        if path.is_symlink() or not path.is_file():
            raise PublishError(f"{path}: missing after copy")
        got_sha, got_size = sha256_file(path)
        if (got_sha, got_size) != (sha256, size):
            raise PublishError(
                f"{path}: landed as {got_size} bytes sha256 {got_sha}, expected {size} bytes "
                f"sha256 {sha256}; publish again"
            )

    def put_file(self, key: str, src: Path) -> None:
        dest = self.root / key
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fin, open(dest, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
        except OSError as e:
            raise PublishError(f"copying {src} to {dest} failed: {e}") from e

    def put_bytes(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / key, data)

    def write_latest(self, model: str, version: int) -> None:
        atomic_write(self.root / model / LATEST, f"{version}\n".encode())

    def fetch_version(self, model: str, version: int, dest: Path) -> Path:
        """Copy `<model>/<version>/` into the empty/nonexistent `dest` (symlinks kept as links, so
        that verification rejects them); return `dest`."""
        src = self.root / model / str(version)
        if src.is_symlink():  # copytree would follow it, and verification would never see the link
            raise ArtifactError(f"{src}: the version directory is a symlink; copy it instead")
        if not src.is_dir():
            raise PublishError(f"{src}: version directory not found")
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        return Path(dest)


class S3Repo:
    """A model repository under `s3://bucket/prefix`; uploads are SSE-KMS."""

    def __init__(self, uri: str, kms_key_id: str | None = None, client=None):
        import boto3

        self.uri = uri
        try:
            self.bucket, prefix = parse_s3_uri(uri)
        except ValueError:
            raise ValueError(f"repository {uri!r}: use s3://BUCKET/PREFIX, e.g. s3://my-models/models") from None
        self.prefix = prefix.strip("/")
        self.kms_key_id = kms_key_id
        self.client = client or boto3.client("s3")

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _error(self, action: str, rel: str, e: Exception) -> PublishError:
        return PublishError(f"{action} s3://{self.bucket}/{self.key(rel)} failed: {e}")

    def versions(self, model: str) -> list[int]:
        try:
            names = child_names(self.client, self.bucket, self.key(f"{model}/"))
        except Exception as e:  # botocore ClientError/EndpointConnectionError and friends
            raise self._error("listing", f"{model}/", e) from e
        return sorted({int(name) for name in names if is_version_name(name)})

    def read_latest(self, model: str) -> int | None:
        rel = f"{model}/{LATEST}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read(_LATEST_READ_BYTES)
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as e:
            raise self._error("reading", rel, e) from e
        return _parse_version(body, f"s3://{self.bucket}/{self.key(rel)}")

    def next_version(self, model: str) -> int:
        return max([0, self.read_latest(model) or 0, *self.versions(model)]) + 1

    def claim_version(self, model: str) -> int:
        # S3 has no exclusive create used here: one publisher per model at a time.
        return self.next_version(model)

    def _sse_args(self) -> dict:
        return sse_kms_args(self.kms_key_id)

    def _upload_error(self, key: str, e: Exception) -> PublishError:
        error = self._error("uploading", key, e)
        if not self.kms_key_id and "AccessDenied" in str(e):
            error.args = (f"{error}; the stack's bucket policy requires --kms-key-id <kms_key_arn>",)
        return error

    def put_file(self, key: str, src: Path) -> None:
        try:
            self.client.upload_file(str(src), self.bucket, self.key(key), ExtraArgs=self._sse_args())
        except Exception as e:
            raise self._upload_error(key, e) from e

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data, **self._sse_args())
        except Exception as e:
            raise self._upload_error(key, e) from e

    def write_latest(self, model: str, version: int) -> None:
        self.put_bytes(f"{model}/{LATEST}", f"{version}\n".encode())

    def _key_matches(self, landed: str | None) -> bool:
        want = self.kms_key_id
        if not want or want.startswith("alias/") or ":alias/" in want:
            return True  # an alias cannot be compared with the key ARN S3 reports
        return bool(landed) and (landed == want or landed.endswith("/" + want))

    def verify_object(self, key: str, sha256: str, size: int) -> None:
        """Read the object back; raise PublishError unless size, sha256 and SSE-KMS match."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key(key))
            digest, got = hashlib.sha256(), 0
            for chunk in obj["Body"].iter_chunks(1 << 20):
                digest.update(chunk)
                got += len(chunk)
        except Exception as e:
            raise self._error("reading back", key, e) from e
        where = f"s3://{self.bucket}/{self.key(key)}"
        if got != size or digest.hexdigest() != sha256:
            raise PublishError(
                f"{where}: landed as {got} bytes sha256 {digest.hexdigest()}, expected {size} "
                f"bytes sha256 {sha256}; publish again"
            )
        if obj.get("ServerSideEncryption") != "aws:kms" or not self._key_matches(obj.get("SSEKMSKeyId")):
            raise PublishError(
                f"{where}: encrypted with {obj.get('ServerSideEncryption')!r} key "
                f"{obj.get('SSEKMSKeyId')!r}, expected aws:kms with {self.kms_key_id!r}"
            )

    def delete_version(self, model: str, version: int) -> None:
        """Best-effort removal of a failed version's objects (LATEST never points at them)."""
        base = self.key(f"{model}/{version}/")
        try:
            delete_prefix(self.client, self.bucket, base)
        except Exception as e:
            log.warning("could not remove s3://%s/%s: %s", self.bucket, base, e)

    def fetch_version(self, model: str, version: int, dest: Path) -> Path:
        """Download every object under `<model>/<version>/` into `dest`; return `dest`.

        Raises:
            PublishError: the version has no objects, is too large, or a download failed.
            ArtifactError: an object key would land outside `dest`.
        """
        base = self.key(f"{model}/{version}/")
        dest = Path(dest)
        paginator = self.client.get_paginator("list_objects_v2")
        objects: list[tuple[str, int]] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                objects += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
        except Exception as e:
            raise self._error("listing", f"{model}/{version}/", e) from e
        if not objects:
            raise PublishError(f"s3://{self.bucket}/{base}: version has no objects")
        if sum(size for _, size in objects) > MAX_FETCH_BYTES:
            raise PublishError(f"s3://{self.bucket}/{base}: larger than {MAX_FETCH_BYTES} bytes")
        for key, _ in objects:
            rel = key[len(base) :]
            if rel != MANIFEST:
                check_relpath(rel)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.client.download_file(self.bucket, key, str(target))
            except Exception as e:
                raise self._error("downloading", key[len(self.prefix) :].lstrip("/"), e) from e
        return dest


Repo = LocalRepo | S3Repo


def open_repo(uri: str, *, kms_key_id: str | None = None) -> Repo:
    """A LocalRepo for a path, an S3Repo for `s3://...`. Raises ValueError for other schemes."""
    uri = str(uri)
    if uri.startswith("s3://"):
        return S3Repo(uri, kms_key_id=kms_key_id)
    if "://" in uri:
        raise ValueError(f"repository {uri!r}: use a local directory or s3://bucket/prefix")
    return LocalRepo(uri)
