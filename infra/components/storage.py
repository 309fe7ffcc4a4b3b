"""Storage: the stack's customer-managed KMS key and its four encrypted S3 buckets."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.builders import policies
from infra.components.base import child, component_tags
from runtime.contract import BUCKET_PURPOSES

ABORT_MULTIPART_DAYS = 7
LOGS = "logs"
"""The purpose whose bucket receives the access logs of the others and the VPC flow logs."""


@dataclass(frozen=True, kw_only=True)
class StorageArgs:
    """Inputs of `Storage`."""

    account_id: str
    """AWS account id (for the key policy and log-delivery conditions)."""
    partition: str
    """AWS partition, usually `aws`."""
    region: str
    """The stack's region."""
    tags: dict[str, str]
    """Base tags (`project`, `stack`); the component adds `component`."""
    name_prefix: str
    """Lowercase prefix of the bucket names, e.g. `stratus-dev`."""
    alias_path: str = ""
    """`<organization>/<project>/<stack>`: the key alias is `alias/<alias_path>`, unique per account
    and region; empty: `alias/<name_prefix>`."""
    kms_deletion_window_days: int = 30
    """Key deletion waiting period (7-30 days)."""
    checkpoint_noncurrent_days: int = 30
    """Days before noncurrent checkpoint versions expire."""
    logs_expiration_days: int = 365
    """Days before log objects expire."""
    force_destroy: bool = False
    """Let `pulumi destroy` delete non-empty buckets."""
    extra_noncurrent_days: dict[str, int] = field(default_factory=lambda: {"models": 90})
    """Noncurrent-version expiry for other buckets (models keep rollback history for 90 days)."""
    autoscaling_role: str | None = None
    """ARN of EC2 Auto Scaling's service-linked role, allowed to use the key for the groups'
    volumes; None: no such statement."""
    key_depends_on: list[pulumi.Resource] = field(default_factory=list)
    """Resources the key waits for (the service-linked role, when the stack creates it)."""


def bucket_prefix(name_prefix: str, purpose: str) -> str:
    """S3-safe bucket name prefix; AWS appends a random suffix, the whole name stays <= 63."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", f"{name_prefix}-{purpose}".lower()).strip("-")
    return cleaned[:36] + "-"  # bucket_prefix allows 37 characters


class Storage(pulumi.ComponentResource):
    """KMS key (rotating) and one bucket per `runtime.contract.BUCKET_PURPOSES`, SSE-KMS by that key.

    Each bucket: owner-enforced ownership (ACLs off), all four public-access-block flags,
    versioning, default SSE-KMS with the bucket key, a TLS-only and stack-key-only policy,
    access logging into `logs` (except `logs` itself), and lifecycle rules.
    """

    key: aws.kms.Key
    key_arn: pulumi.Output[str]
    buckets: dict[str, aws.s3.Bucket]

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stratus:infra:Storage", name, None, opts)
        tags = component_tags(args.tags, "storage")
        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"stratus {args.name_prefix}: buckets, volumes, serving token",
            enable_key_rotation=True,
            deletion_window_in_days=args.kms_deletion_window_days,
            policy=json.dumps(
                policies.kms_key_policy(
                    account_id=args.account_id,
                    partition=args.partition,
                    region=args.region,
                    autoscaling_role=args.autoscaling_role,
                )
            ),
            tags=tags,
            opts=child(self, depends_on=args.key_depends_on),
        )
        self.key_arn = self.key.arn
        aws.kms.Alias(
            f"{name}-key-alias",
            # Alias names allow [A-Za-z0-9/_-] only; stack names may also hold dots.
            name="alias/" + re.sub(r"[^A-Za-z0-9/_-]", "-", args.alias_path or args.name_prefix),
            target_key_id=self.key.key_id,
            opts=child(self),
        )
        self.buckets = {}
        # logs first: every other bucket logs into it.
        for purpose in sorted(BUCKET_PURPOSES, key=lambda p: p != LOGS):
            self.buckets[purpose] = self._bucket(name, purpose, args, tags)
        self.register_outputs({"key_arn": self.key_arn, **{p: b.bucket for p, b in self.buckets.items()}})

    def _bucket(self, name: str, purpose: str, args: StorageArgs, tags: dict) -> aws.s3.Bucket:
        res = f"{name}-{purpose}"
        bucket = aws.s3.Bucket(
            res,
            bucket_prefix=bucket_prefix(args.name_prefix, purpose),
            force_destroy=args.force_destroy,
            tags={**tags, "purpose": purpose},
            opts=child(self),
        )
        on_bucket = child(self)
        ownership = aws.s3.BucketOwnershipControls(
            f"{res}-ownership",
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=on_bucket,
        )
        public_block = aws.s3.BucketPublicAccessBlock(
            f"{res}-public-access-block",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=on_bucket,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{res}-encryption",
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {
                        "sse_algorithm": "aws:kms",
                        "kms_master_key_id": self.key.arn,
                    },
                    # Bucket keys cut KMS request costs by ~99% for checkpoint-sized traffic.
                    "bucket_key_enabled": True,
                }
            ],
            opts=on_bucket,
        )
        versioning = aws.s3.BucketVersioning(
            f"{res}-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=on_bucket,
        )
        # S3 rejects concurrent bucket-config writes; the policy also must follow the public
        # access block so it is never evaluated against a half-configured bucket.
        self._policy(res, bucket, purpose, args, depends_on=[public_block, ownership])
        if purpose != LOGS:
            aws.s3.BucketLogging(
                f"{res}-logging",
                bucket=bucket.id,
                target_bucket=self.buckets[LOGS].id,
                target_prefix=f"{policies.ACCESS_LOG_PREFIX}{purpose}/",
                opts=on_bucket,
            )
        aws.s3.BucketLifecycleConfiguration(
            f"{res}-lifecycle",
            bucket=bucket.id,
            rules=self._lifecycle_rules(purpose, args),
            # Lifecycle rules on noncurrent versions need versioning to be on first.
            opts=child(self, depends_on=[versioning]),
        )
        return bucket

    def _policy(
        self, res: str, bucket: aws.s3.Bucket, purpose: str, args: StorageArgs, depends_on: list[pulumi.Resource]
    ) -> None:
        policy = pulumi.Output.all(bucket.arn, self.key.arn).apply(
            lambda arns: json.dumps(
                policies.bucket_policy(
                    bucket_arn=arns[0],
                    key_arn=arns[1],
                    account_id=args.account_id,
                    partition=args.partition,
                    region=args.region,
                    log_delivery=purpose == LOGS,
                )
            )
        )
        aws.s3.BucketPolicy(f"{res}-policy", bucket=bucket.id, policy=policy, opts=child(self, depends_on=depends_on))

    @staticmethod
    def _lifecycle_rules(purpose: str, args: StorageArgs) -> list[dict]:
        everything = {"prefix": ""}
        rules: list[dict] = [
            {
                "id": "abort-incomplete-multipart-uploads",
                "status": "Enabled",
                "filter": everything,
                "abort_incomplete_multipart_upload": {"days_after_initiation": ABORT_MULTIPART_DAYS},
            }
        ]
        noncurrent = {
            "checkpoints": args.checkpoint_noncurrent_days,
            LOGS: 30,
            **args.extra_noncurrent_days,
        }
        if purpose in noncurrent:
            rules.append(
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": everything,
                    "noncurrent_version_expiration": {"noncurrent_days": noncurrent[purpose]},
                }
            )
        if purpose == LOGS:
            rules.append(
                {
                    "id": "expire-logs",
                    "status": "Enabled",
                    "filter": everything,
                    "expiration": {"days": args.logs_expiration_days},
                }
            )
        return rules
