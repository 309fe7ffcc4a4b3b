"""Storage on its own under mocks: the key and the four encrypted, private, versioned, logged buckets."""

from __future__ import annotations

from infra.components.storage import Storage, StorageArgs, bucket_prefix
from infra.tools.offline import run
from tests.infra import checks
from tests.infra.components.support import TAGS


def storage_run(**overrides):
    args = dict(account_id="123456789012", partition="aws", region="us-east-1", tags=TAGS, name_prefix="stratus-dev")
    return run(lambda: {"storage": Storage("storage", StorageArgs(**{**args, **overrides}))})


def test_storage_buckets_are_encrypted_private_versioned_logged():
    result = storage_run(checkpoint_noncurrent_days=14)
    for check in (
        checks.bucket_encryption,
        checks.public_access_block,
        checks.tls_only_and_key_only_policy,
        checks.kms_key_hygiene,
        checks.tags_present,
    ):
        assert check(result) == [], check.__name__
    buckets = {b.inputs["tags"]["purpose"]: b for b in result.of_type(checks.BUCKET)}
    assert sorted(buckets) == ["checkpoints", "datasets", "logs", "models"]
    logs_id = buckets["logs"].id
    for purpose, bucket in buckets.items():
        ownership = result.attached("aws:s3/bucketOwnershipControls:BucketOwnershipControls", bucket)
        assert [o.inputs["rule"]["objectOwnership"] for o in ownership] == ["BucketOwnerEnforced"], bucket.urn
        versioning = result.attached("aws:s3/bucketVersioning:BucketVersioning", bucket)
        assert [v.inputs["versioningConfiguration"]["status"] for v in versioning] == ["Enabled"], bucket.urn
        logging = result.attached("aws:s3/bucketLogging:BucketLogging", bucket)
        if purpose == "logs":
            assert logging == [], "the logs bucket must not log into itself"
        else:
            assert [(x.inputs["targetBucket"], x.inputs["targetPrefix"]) for x in logging] == [
                (logs_id, f"s3-access/{purpose}/")
            ], bucket.urn
        (lifecycle,) = result.attached("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", bucket)
        rules = {r["id"]: r for r in lifecycle.inputs["rules"]}
        assert rules["abort-incomplete-multipart-uploads"]["abortIncompleteMultipartUpload"] == {
            "daysAfterInitiation": 7
        }
    checkpoint_rules = result.attached(
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", buckets["checkpoints"]
    )[0].inputs["rules"]
    assert {"noncurrentDays": 14} in [r.get("noncurrentVersionExpiration") for r in checkpoint_rules]


def test_storage_key_window_follows_args():
    result = storage_run(kms_deletion_window_days=7)
    assert result.of_type(checks.KEY)[0].inputs["deletionWindowInDays"] == 7


def test_bucket_prefix_is_s3_safe():
    prefix = bucket_prefix("Stratus_My.Very-Long-Stack-Name-That-Goes-On", "checkpoints")
    assert len(prefix) <= 37 and prefix.endswith("-")
    assert all(c.islower() or c.isdigit() or c == "-" for c in prefix)
