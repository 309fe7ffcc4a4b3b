"""S3 helpers shared by every stage: URIs, SSE-KMS arguments, existence checks, downloads.

boto3 is reached with its standard environment (credentials chain, `AWS_ENDPOINT_URL`), so tests
point it at a local emulator server and nothing is patched. boto3 is imported lazily: a local
run that never touches S3 does not pay for it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key") (the key may be empty).

    Raises:
        ValueError: not an `s3://` URI, no bucket, or a `..` path part.
    """
    rest = uri[len("s3://") :] if uri.startswith("s3://") else ""
    bucket, _, key = rest.partition("/")
    if not uri.startswith("s3://") or not bucket or ".." in key.split("/"):
        raise ValueError(f"{uri!r}: use s3://BUCKET/KEY, e.g. s3://my-models/models")
    return bucket, key


def sse_kms_args(kms_key_id: str | None) -> dict[str, str]:
    """Upload arguments for SSE-KMS; with a key id, the stack's bucket policies accept them."""
    args = {"ServerSideEncryption": "aws:kms"}
    if kms_key_id:
        args["SSEKMSKeyId"] = kms_key_id
    return args


def error_code(e: Exception) -> str:
    """The AWS error code of a botocore ClientError (e.g. "NoSuchKey"), else the message."""
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code", "") or str(e)
    return str(e)


def child_names(s3: Any, bucket: str, prefix: str) -> list[str]:
    """Names of the "folders" directly under `prefix` (`<prefix><name>/...`), in listing order."""
    names = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        names += [common["Prefix"][len(prefix) :].rstrip("/") for common in page.get("CommonPrefixes", [])]
    return names


def delete_prefix(s3: Any, bucket: str, prefix: str) -> None:
    """Delete every object under `prefix`, a page (up to 1,000 keys) per request."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def head_or_none(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """`head_object` of the key, or None when it does not exist (other errors propagate)."""
    from botocore.exceptions import ClientError

    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if error_code(e) in NOT_FOUND_CODES:
            return None
        raise


def get_json_or_none(s3: Any, bucket: str, key: str) -> Any:
    """The JSON document at the key, or None when it does not exist (other errors propagate)."""
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if error_code(e) in NOT_FOUND_CODES:
            return None
        raise
    return json.loads(body)


def download_to_temp(uri: str) -> Path:
    """Download `s3://bucket/key` to a new temp file (same suffix) and return its path.

    The caller deletes the file. Raises botocore's errors (and ValueError for a bad URI); the
    partial file is removed first.
    """
    import boto3

    bucket, key = parse_s3_uri(uri)
    if not key:
        raise ValueError(f"{uri!r}: names a bucket, not an object; use s3://BUCKET/KEY")
    fd, tmp_name = tempfile.mkstemp(suffix=Path(key).suffix)
    os.close(fd)
    try:
        boto3.client("s3").download_file(bucket, key, tmp_name)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name)
