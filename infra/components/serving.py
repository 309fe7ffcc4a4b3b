"""Serving host: one private instance running the inference server, its token in SSM."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.builders.userdata import serving_user_data
from infra.components.base import child, component_tags, instance_settings
from infra.components.images import find_image
from infra.config.catalog import InstanceType

TOKEN_LENGTH = 48


@dataclass(frozen=True, kw_only=True)
class ServingArgs:
    """Inputs of `Serving`."""

    instance_type: InstanceType
    """Catalog entry of the host type; a GPU type gets the Deep Learning AMI."""
    subnet_id: pulumi.Input[str]
    """Private subnet (no public IP mapping)."""
    security_group_id: pulumi.Input[str]
    """The serving security group (inference port from the allowed ranges only)."""
    instance_profile_name: pulumi.Input[str]
    """Server instance profile."""
    key_arn: pulumi.Input[str]
    """The stack key, for the root volume and the token parameter."""
    token_parameter_name: str
    """SSM parameter name of the bearer token (the IAM policy was scoped to it)."""
    models_bucket: pulumi.Input[str]
    """Name of the models bucket."""
    model_name: str
    """Model to serve."""
    port: int
    """Inference port (HTTP)."""
    region: str
    """The stack's region."""
    tags: dict[str, str]
    """Base tags; the component adds `component: serving`."""
    grpc_port: int = 0
    """Open Inference Protocol gRPC port (`stratus serve --grpc-port`); 0: HTTP only."""
    ami_id: str | None = None
    """Pinned AMI (a change replaces the host); None: the newest, which the host then ignores."""
    root_volume_gb: int = 50
    """Root volume size."""


class Serving(pulumi.ComponentResource):
    """Random token in an SSM SecureString (stack key) and the serving instance.

    Only the parameter's name leaves the component; the value stays in Pulumi state as a
    secret and in SSM, and the server reads it at start with its role.
    """

    instance_id: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    url: pulumi.Output[str]
    grpc_target: pulumi.Output[str] | None
    """`<private ip>:<grpc port>` (a gRPC client's target), None when gRPC is off."""
    token_parameter_name: pulumi.Output[str]

    def __init__(self, name: str, args: ServingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stratus:infra:Serving", name, None, opts)
        tags = component_tags(args.tags, "serving")
        token = random.RandomPassword(f"{name}-token", length=TOKEN_LENGTH, special=False, opts=child(self))
        parameter = aws.ssm.Parameter(
            f"{name}-token-parameter",
            name=args.token_parameter_name,
            description="stratus serving bearer token",
            type="SecureString",
            key_id=args.key_arn,
            value=token.result,
            tags=tags,
            opts=child(self),
        )
        image = find_image(gpu=args.instance_type.gpus > 0, override=args.ami_id, region=args.region)
        user_data = pulumi.Output.from_input(args.models_bucket).apply(
            lambda bucket: serving_user_data(
                region=args.region,
                models_bucket=bucket,
                model_name=args.model_name,
                port=args.port,
                grpc_port=args.grpc_port,
                token_parameter=args.token_parameter_name,
                gpu=args.instance_type.gpus > 0,
            )
        )
        host = aws.ec2.Instance(
            f"{name}-host",
            ami=image.ami_id,
            instance_type=args.instance_type.name,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[args.security_group_id],
            associate_public_ip_address=False,
            **instance_settings(
                key_arn=args.key_arn, root_volume_gb=args.root_volume_gb, profile_name=args.instance_profile_name
            ),
            user_data=user_data,
            user_data_replace_on_change=True,
            volume_tags=tags,
            tags={**tags, "Name": f"{name}-host"},
            # The server reads the token at start; it must exist before the instance boots. An
            # AMI looked up as "newest" (not pinned) must not replace the host when AWS publishes one.
            opts=child(self, depends_on=[parameter], ignore_changes=[] if args.ami_id else ["ami"]),
        )
        self.instance_id = host.id
        self.private_ip = host.private_ip
        self.url = pulumi.Output.concat("http://", host.private_ip, ":", str(args.port))
        self.grpc_target = pulumi.Output.concat(host.private_ip, ":", str(args.grpc_port)) if args.grpc_port else None
        self.token_parameter_name = parameter.name
        self.register_outputs({"instance_id": self.instance_id, "url": self.url})
