"""IAM: trainer and server roles with instance profiles, least privilege, EC2 trust only."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.builders import policies
from infra.builders.autoscaling import AUTOSCALING_ROLE_NAME, AUTOSCALING_SERVICE, autoscaling_role_arn
from infra.components.base import child, component_tags

SSM_CORE_POLICY = "AmazonSSMManagedInstanceCore"
"""AWS managed policy that lets the SSM agent register (Session Manager instead of SSH)."""


@dataclass(frozen=True, kw_only=True)
class IamArgs:
    """Inputs of `Iam`."""

    bucket_arns: dict[str, pulumi.Input[str]]
    """Bucket ARNs by purpose: `datasets`, `checkpoints`, `models`, `logs`."""
    key_arn: pulumi.Input[str]
    """The stack key."""
    token_parameter_arn: pulumi.Input[str]
    """ARN of the serving token's SSM parameter (the parameter itself is made by `Serving`)."""
    tls_parameter_arns: tuple[pulumi.Input[str], pulumi.Input[str]]
    """ARNs of the serving certificate's and key's SSM parameters (made by `StackTls`)."""
    region: str
    """The stack's region (`kms:ViaService` conditions)."""
    partition: str
    """AWS partition of the managed-policy ARN."""
    tags: dict[str, str]
    """Base tags; the component adds `component: iam`."""


@dataclass(frozen=True)
class Profile:
    """A role and the instance profile that wraps it."""

    role: aws.iam.Role
    instance_profile: aws.iam.InstanceProfile


class Iam(pulumi.ComponentResource):
    """Two roles, `trainer` and `server`, each with one inline policy and SSM core.

    No users, no access keys: instances get short-lived credentials through their profiles.
    """

    trainer: Profile
    server: Profile

    def __init__(self, name: str, args: IamArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stratus:infra:Iam", name, None, opts)
        self._name, self._args = name, args
        self._tags = component_tags(args.tags, "iam")
        b = args.bucket_arns
        trainer_doc = pulumi.Output.all(
            b["datasets"], b["checkpoints"], b["models"], args.key_arn, args.token_parameter_arn
        ).apply(
            lambda v: policies.trainer_policy(
                datasets_arn=v[0],
                checkpoints_arn=v[1],
                models_arn=v[2],
                key_arn=v[3],
                token_parameter_arn=v[4],
                region=args.region,
            )
        )
        purposes = sorted(b)
        server_doc = pulumi.Output.all(
            args.key_arn, args.token_parameter_arn, *args.tls_parameter_arns, *(b[p] for p in purposes)
        ).apply(
            lambda v: policies.server_policy(
                bucket_arns=dict(zip(purposes, v[4:], strict=True)),
                key_arn=v[0],
                token_parameter_arn=v[1],
                tls_cert_parameter_arn=v[2],
                tls_key_parameter_arn=v[3],
                region=args.region,
            )
        )
        self.trainer = self._profile("trainer", trainer_doc)
        self.server = self._profile("server", server_doc)
        self.register_outputs({"trainer_role_arn": self.trainer.role.arn, "server_role_arn": self.server.role.arn})

    def _profile(self, role_name: str, document: pulumi.Output[dict]) -> Profile:
        res = f"{self._name}-{role_name}"
        role = aws.iam.Role(
            f"{res}-role",
            assume_role_policy=json.dumps(policies.ec2_assume_role_policy()),
            description=f"stratus {role_name} instances",
            max_session_duration=3600,
            tags=self._tags,
            opts=child(self),
        )
        aws.iam.RolePolicy(
            f"{res}-policy",
            role=role.id,
            policy=document.apply(json.dumps),
            opts=child(self),
        )
        aws.iam.RolePolicyAttachment(
            f"{res}-ssm-core",
            role=role.name,
            policy_arn=f"arn:{self._args.partition}:iam::aws:policy/{SSM_CORE_POLICY}",
            opts=child(self),
        )
        profile = aws.iam.InstanceProfile(f"{res}-profile", role=role.name, tags=self._tags, opts=child(self))
        return Profile(role, profile)


def autoscaling_service_role(*, partition: str, account_id: str, tags: dict[str, str]) -> tuple[str, list]:
    """EC2 Auto Scaling's service-linked role: its ARN, and the resource creating it when the
    account has none yet (AWS creates it with the first group, but the stack key's policy must
    name it before). Kept on `pulumi destroy` (other groups of the account use it) and dropped
    from the stack once it exists.

    Returns:
        (role ARN, [the `aws.iam.ServiceLinkedRole`] or [] when the account has the role).
    """
    found = aws.iam.get_roles(
        path_prefix=f"/aws-service-role/{AUTOSCALING_SERVICE}/",
        name_regex=f"^{AUTOSCALING_ROLE_NAME}$",
    )
    arn = autoscaling_role_arn(partition=partition, account_id=account_id)
    if found.arns:
        return arn, []
    role = aws.iam.ServiceLinkedRole(
        "autoscaling-service-role",
        aws_service_name=AUTOSCALING_SERVICE,
        description="EC2 Auto Scaling (created by stratus because the account had none)",
        tags=component_tags(tags, "iam"),
        opts=pulumi.ResourceOptions(retain_on_delete=True),
    )
    return arn, [role]
