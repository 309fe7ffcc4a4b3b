"""The shared S3 prefix helpers, against the moto server."""

from __future__ import annotations

import boto3

from runtime.common.s3 import child_names, delete_prefix


def test_child_names_and_delete_prefix(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="prefixes")
    keys = ["run/global_step2/a", "run/global_step10/b", "run/global_step10/c/d", "run/latest", "other/x"]
    keys += [f"run/big/{i}" for i in range(1005)]  # more than one delete request's worth
    for key in keys:
        s3.put_object(Bucket="prefixes", Key=key, Body=b"1")
    assert sorted(child_names(s3, "prefixes", "run/")) == ["big", "global_step10", "global_step2"]
    delete_prefix(s3, "prefixes", "run/big/")
    delete_prefix(s3, "prefixes", "run/global_step10/")
    left = [o["Key"] for o in s3.list_objects_v2(Bucket="prefixes")["Contents"]]
    assert sorted(left) == ["other/x", "run/global_step2/a", "run/latest"]
    assert child_names(s3, "prefixes", "none/") == []
