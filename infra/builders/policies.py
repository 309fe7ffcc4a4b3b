"""IAM, KMS key and S3 bucket policy documents, built by pure functions from ARNs.

Components call these inside `Output.apply`; tests call them directly with plain strings.
No Allow statement uses a wildcard action, and every Allow is scoped to the stack's own ARNs
except the key policy, whose `Resource: "*"` means "this key" (AWS key-policy semantics).
"""

from __future__ import annotations

from typing import Any

from infra.builders.autoscaling import autoscaling_key_statements
from runtime.contract import MODELS_PREFIX, RUNTIME_PREFIX

Document = dict[str, Any]
VERSION = "2012-10-17"

# MODELS_PREFIX and RUNTIME_PREFIX come from the contract: the runtime writes and reads exactly
# those prefixes, so the grants below must name the same ones. The log prefixes are infra-only.
ACCESS_LOG_PREFIX = "s3-access/"
"""Prefix of S3 server access logs in the logs bucket."""
FLOW_LOG_PREFIX = "vpc-flow-logs/"
"""Prefix of VPC flow logs in the logs bucket."""

# Explicit lists instead of `kms:*`/`kms:Describe*`: the stack forbids wildcard actions and a
# reviewer can read exactly what the account's IAM principals may do with the key.
KEY_ADMIN_ACTIONS = [
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:CreateGrant",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:RetireGrant",
    "kms:RevokeGrant",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
]
KEY_USE_ACTIONS = [
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
]
PARAMETER_READ_ACTIONS = [
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:GetParameterHistory",
    "ssm:GetParametersByPath",
]
"""Every SSM action that returns a parameter's value."""
TOKEN_READ_ACTIONS = PARAMETER_READ_ACTIONS


def _statement(sid: str, effect: str, actions: list[str], resources: Any, **extra: Any) -> dict:
    return {"Sid": sid, "Effect": effect, "Action": actions, "Resource": resources, **extra}


def ec2_assume_role_policy() -> Document:
    """Trust policy letting only the EC2 service assume a role (for instance profiles)."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "Ec2AssumeRole",
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def kms_key_policy(*, account_id: str, partition: str, region: str, autoscaling_role: str | None = None) -> Document:
    """Key policy of the stack key: the account's IAM decides who uses it; log delivery may too.

    The account root statement delegates to IAM (no principal gets access from the key policy
    alone); the two service statements let S3 access logging and VPC flow-log delivery write
    SSE-KMS objects into the logs bucket, only on behalf of this account. With
    `autoscaling_role` (`autoscaling_role_arn`), EC2 Auto Scaling may encrypt the volumes of the
    groups' instances with the key (the role must exist before the policy names it).
    """
    source_account = {"StringEquals": {"aws:SourceAccount": account_id}}
    extra = autoscaling_key_statements(autoscaling_role, KEY_USE_ACTIONS) if autoscaling_role else []
    return {
        "Version": VERSION,
        "Statement": [
            _statement(
                "AccountAdministersAndUsesKeyThroughIam",
                "Allow",
                KEY_ADMIN_ACTIONS + KEY_USE_ACTIONS,
                "*",
                Principal={"AWS": f"arn:{partition}:iam::{account_id}:root"},
            ),
            _statement(
                "S3AccessLogDelivery",
                "Allow",
                ["kms:Decrypt", "kms:GenerateDataKey"],
                "*",
                Principal={"Service": "logging.s3.amazonaws.com"},
                Condition=source_account,
            ),
            _statement(
                "FlowLogDelivery",
                "Allow",
                ["kms:Decrypt", "kms:GenerateDataKey"],
                "*",
                Principal={"Service": "delivery.logs.amazonaws.com"},
                Condition={
                    **source_account,
                    "ArnLike": {"aws:SourceArn": f"arn:{partition}:logs:{region}:{account_id}:*"},
                },
            ),
            *extra,
        ],
    }


def bucket_policy(
    *,
    bucket_arn: str,
    key_arn: str,
    account_id: str,
    partition: str,
    region: str,
    log_delivery: bool = False,
) -> Document:
    """TLS-only, stack-key-only bucket policy; with `log_delivery`, also lets AWS write logs.

    Uploads that ask for another encryption, another key, or SSE-KMS without naming a key
    (which would fall back to the AWS managed `aws/s3` key) are denied; uploads without
    encryption headers get the bucket default, the stack key. Log delivery services send no
    headers, so they work with this policy.
    """
    objects = f"{bucket_arn}/*"
    put = ["s3:PutObject"]
    statements = [
        _statement(
            "DenyInsecureTransport",
            "Deny",
            ["s3:*"],
            [bucket_arn, objects],
            Principal="*",
            Condition={"Bool": {"aws:SecureTransport": "false"}},
        ),
        _statement(
            "DenyNonKmsEncryption",
            "Deny",
            put,
            objects,
            Principal="*",
            Condition={
                "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
                "Null": {"s3:x-amz-server-side-encryption": "false"},
            },
        ),
        _statement(
            "DenyOtherKmsKeys",
            "Deny",
            put,
            objects,
            Principal="*",
            Condition={
                "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": key_arn},
                "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "false"},
            },
        ),
        _statement(
            "DenyKmsWithoutKeyId",
            "Deny",
            put,
            objects,
            Principal="*",
            Condition={
                "StringEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
                "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "true"},
            },
        ),
    ]
    if log_delivery:
        statements += _log_delivery_statements(bucket_arn, account_id=account_id, partition=partition, region=region)
    return {"Version": VERSION, "Statement": statements}


def _log_delivery_statements(bucket_arn: str, *, account_id: str, partition: str, region: str) -> list[dict]:
    """Let S3 access logging and VPC flow-log delivery write their prefixes, for this account only."""
    put = ["s3:PutObject"]
    source_account = {"StringEquals": {"aws:SourceAccount": account_id}}
    logs_source = {"ArnLike": {"aws:SourceArn": f"arn:{partition}:logs:{region}:{account_id}:*"}}
    return [
        _statement(
            "S3AccessLogDelivery",
            "Allow",
            put,
            f"{bucket_arn}/{ACCESS_LOG_PREFIX}*",
            Principal={"Service": "logging.s3.amazonaws.com"},
            Condition=source_account,
        ),
        _statement(
            "FlowLogDeliveryWrite",
            "Allow",
            put,
            f"{bucket_arn}/{FLOW_LOG_PREFIX}AWSLogs/{account_id}/*",
            Principal={"Service": "delivery.logs.amazonaws.com"},
            Condition={
                "StringEquals": {
                    "aws:SourceAccount": account_id,
                    "s3:x-amz-acl": "bucket-owner-full-control",
                },
                **logs_source,
            },
        ),
        _statement(
            "FlowLogDeliveryAclCheck",
            "Allow",
            ["s3:GetBucketAcl", "s3:ListBucket"],
            bucket_arn,
            Principal={"Service": "delivery.logs.amazonaws.com"},
            Condition={**source_account, **logs_source},
        ),
    ]


def token_parameter_name(qualified_stack: str) -> str:
    """SSM parameter name of the serving token of `<organization>/<project>/<stack>`, e.g.
    `/acme/stratus/dev/serving-token` (unique per account and region)."""
    return f"/{qualified_stack}/serving-token"


def tls_parameter_names(qualified_stack: str) -> tuple[str, str]:
    """SSM parameter names of the serving certificate and key of `<organization>/<project>/<stack>`,
    beside the token: (`/acme/stratus/dev/serving-tls-cert`, `/acme/stratus/dev/serving-tls-key`)."""
    return f"/{qualified_stack}/serving-tls-cert", f"/{qualified_stack}/serving-tls-key"


def token_parameter_arn(*, partition: str, region: str, account_id: str, name: str) -> str:
    """ARN of the SSM parameter `name` (which starts with a slash)."""
    return f"arn:{partition}:ssm:{region}:{account_id}:parameter{name}"


def _via(service: str, region: str) -> dict:
    return {"StringEquals": {"kms:ViaService": f"{service}.{region}.amazonaws.com"}}


def trainer_policy(
    *,
    datasets_arn: str,
    checkpoints_arn: str,
    models_arn: str,
    key_arn: str,
    token_parameter_arn: str,
    region: str,
) -> Document:
    """Trainer role: read datasets, read/write checkpoints, publish models, never the token.

    KMS use is limited to calls made through S3 (`kms:ViaService`), so the trainer cannot
    decrypt the serving token's SecureString even though SSM core grants `ssm:GetParameter`
    on `*`; the explicit Deny on the token is the second lock.
    """
    token_path = token_parameter_arn.rsplit("/", 1)[0]
    return {
        "Version": VERSION,
        "Statement": [
            _statement(
                "ListStackBuckets",
                "Allow",
                ["s3:ListBucket", "s3:GetBucketLocation"],
                [datasets_arn, checkpoints_arn, models_arn],
            ),
            _statement("ReadDatasets", "Allow", ["s3:GetObject"], f"{datasets_arn}/*"),
            _statement(
                "ReadWriteCheckpoints",
                "Allow",
                [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                f"{checkpoints_arn}/*",
            ),
            _statement(
                "PublishModels",
                "Allow",
                ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                f"{models_arn}/{MODELS_PREFIX}*",
            ),
            _statement("ReadRuntimeBundle", "Allow", ["s3:GetObject"], f"{models_arn}/{RUNTIME_PREFIX}*"),
            _statement(
                "UseStackKeyThroughS3",
                "Allow",
                ["kms:Decrypt", "kms:GenerateDataKey"],
                key_arn,
                Condition=_via("s3", region),
            ),
            _statement(
                "DenyServingToken",
                "Deny",
                TOKEN_READ_ACTIONS,
                [token_parameter_arn, token_path, f"{token_path}/*"],
            ),
        ],
    }


def server_policy(
    *,
    bucket_arns: dict[str, str],
    key_arn: str,
    token_parameter_arn: str,
    tls_cert_parameter_arn: str,
    tls_key_parameter_arn: str,
    region: str,
) -> Document:
    """Server role: read the models and runtime prefixes and its own three parameters; no writes.

    The AWS managed policy AmazonSSMManagedInstanceCore (attached for Session Manager) allows
    `ssm:GetParameter(s)` on every parameter of the account; `DenyOtherParameters` takes that
    back for everything but the token, the TLS certificate and the TLS key. KMS decrypts only
    through SSM for the two SecureStrings (the certificate is a String) and through S3.

    Args:
        bucket_arns: ARNs of the stack buckets by purpose (`datasets`, `checkpoints`,
            `models`, `logs`); only `models` is readable, every bucket is write-denied.
        key_arn: the stack key.
        token_parameter_arn: ARN of the serving token parameter.
        tls_cert_parameter_arn: ARN of the server certificate parameter.
        tls_key_parameter_arn: ARN of the server key parameter.
        region: the stack's region (for `kms:ViaService`).
    """
    models_arn = bucket_arns["models"]
    readable = [f"{models_arn}/{MODELS_PREFIX}*", f"{models_arn}/{RUNTIME_PREFIX}*"]
    own_parameters = [token_parameter_arn, tls_cert_parameter_arn, tls_key_parameter_arn]
    return {
        "Version": VERSION,
        "Statement": [
            _statement(
                "ListModelRepository",
                "Allow",
                ["s3:ListBucket"],
                models_arn,
                Condition={"StringLike": {"s3:prefix": [MODELS_PREFIX + "*", RUNTIME_PREFIX + "*"]}},
            ),
            _statement("ReadModels", "Allow", ["s3:GetObject"], readable),
            _statement("ReadServingParameters", "Allow", ["ssm:GetParameter"], own_parameters),
            _statement("DecryptModels", "Allow", ["kms:Decrypt"], key_arn, Condition=_via("s3", region)),
            _statement(
                "DecryptServingSecrets",
                "Allow",
                ["kms:Decrypt"],
                key_arn,
                Condition={
                    "StringEquals": {
                        "kms:ViaService": f"ssm.{region}.amazonaws.com",
                        "kms:EncryptionContext:PARAMETER_ARN": [token_parameter_arn, tls_key_parameter_arn],
                    },
                },
            ),
            {
                "Sid": "DenyOtherParameters",
                "Effect": "Deny",
                "Action": PARAMETER_READ_ACTIONS,
                "NotResource": own_parameters,
            },
            _statement(
                "DenyWritesToStackBuckets",
                "Deny",
                ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl"],
                [f"{arn}/*" for arn in sorted(bucket_arns.values())],
            ),
        ],
    }
