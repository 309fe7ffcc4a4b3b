"""EC2 Auto Scaling's service-linked role and the stack key: the role's name, ARN and the key
policy statements that let it encrypt a group's volumes. Pure functions (no Pulumi)."""

from __future__ import annotations

AUTOSCALING_SERVICE = "autoscaling.amazonaws.com"
AUTOSCALING_ROLE_NAME = "AWSServiceRoleForAutoScaling"


def autoscaling_role_arn(*, partition: str, account_id: str) -> str:
    """ARN of EC2 Auto Scaling's default service-linked role in the account."""
    return f"arn:{partition}:iam::{account_id}:role/aws-service-role/{AUTOSCALING_SERVICE}/{AUTOSCALING_ROLE_NAME}"


def autoscaling_key_statements(role_arn: str, use_actions: list[str]) -> list[dict]:
    """Key policy statements for EC2 Auto Scaling's service-linked role.

    The role's fixed permissions cover no customer managed key: without these, a group's volumes
    under the stack key fail to launch (Auto Scaling user guide, "Required AWS KMS key policy for
    use with encrypted volumes"). The grant statement is limited to grants for AWS resources.
    """
    principal = {"AWS": role_arn}
    return [
        {
            "Sid": "AutoScalingUsesKeyForVolumes",
            "Effect": "Allow",
            "Action": [*use_actions, "kms:DescribeKey"],
            "Resource": "*",
            "Principal": principal,
        },
        {
            "Sid": "AutoScalingAttachesVolumes",
            "Effect": "Allow",
            "Action": ["kms:CreateGrant"],
            "Resource": "*",
            "Principal": principal,
            "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
        },
    ]
