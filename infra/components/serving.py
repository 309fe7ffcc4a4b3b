"""Serving: replicas of the inference server in an Auto Scaling group behind an internal NLB.

The token and the TLS key live in SSM (SecureStrings under the stack key), the certificate
authority in Pulumi state; the hosts boot from one launch template and roll host by host when
it changes (an instance refresh that launches the new host before draining the old one).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.builders.userdata import serving_user_data
from infra.components.balancer import Balancer, BalancerArgs
from infra.components.base import IMDSV2_ONLY, child, component_tags
from infra.components.images import find_image
from infra.components.tls import StackTls, StackTlsArgs
from infra.config.catalog import InstanceType

TOKEN_LENGTH = 48
BOOT_SECONDS_CPU = 900
BOOT_SECONDS_GPU = 1800
"""Health-check grace and refresh warm-up: the host installs the runtime bundle at first boot
(`stratus-prepare.service`); a GPU host also verifies the CUDA build of torch."""
REFRESH_MIN_HEALTHY_PERCENT = 100
REFRESH_MAX_HEALTHY_PERCENT = 200
"""An instance refresh keeps every current host in service and launches each replacement before
it drains the host it replaces (a one-host group never drops to zero)."""


@dataclass(frozen=True, kw_only=True)
class ServingArgs:
    """Inputs of `Serving`."""

    instance_type: InstanceType
    """Catalog entry of the host type; a GPU type gets the Deep Learning AMI."""
    vpc_id: pulumi.Input[str]
    """The stack's VPC (the target groups)."""
    subnet_ids: list[pulumi.Input[str]]
    """The private subnets, one per zone: hosts and load-balancer nodes spread over them."""
    security_group_id: pulumi.Input[str]
    """The serving group: the inference ports from the load balancer's group only."""
    lb_security_group_id: pulumi.Input[str]
    """The load balancer's group: the inference ports from the allowed ranges."""
    instance_profile_name: pulumi.Input[str]
    """Server instance profile."""
    key_arn: pulumi.Input[str]
    """The stack key: root volumes, the token and the TLS key parameters."""
    token_parameter_name: str
    """SSM parameter name of the bearer token (the IAM policy was scoped to it)."""
    tls_cert_parameter_name: str
    """SSM parameter name of the server certificate (the IAM policy was scoped to it)."""
    tls_key_parameter_name: str
    """SSM parameter name of the server key (the IAM policy was scoped to it)."""
    organization: str
    """Subject organization of the certificates (`<organization>/<project>/<stack>`)."""
    models_bucket: pulumi.Input[str]
    """Name of the models bucket."""
    model_name: str
    """Model to serve."""
    port: int
    """REST port (HTTPS), on the load balancer and the hosts."""
    region: str
    """The stack's region."""
    tags: dict[str, str]
    """Base tags; the component adds `component: serving`."""
    grpc_port: int = 0
    """Open Inference Protocol gRPC port (TLS); 0: REST only."""
    ami_id: str | None = None
    """Pinned AMI (a change rolls the hosts); None: the newest, which running hosts ignore."""
    root_volume_gb: int = 50
    """Root volume size of each host."""
    num_hosts: int = 2
    """Hosts kept running: the group's minimum and desired size."""
    max_hosts: int | None = None
    """The group's maximum; None: `num_hosts`."""
    scale_cpu_percent: float | None = None
    """Target average CPU of the hosts (target tracking); None: no scaling policy."""
    drain_seconds: int = 120
    """Deregistration delay: how long a leaving host may finish the requests in flight."""


class Serving(pulumi.ComponentResource):
    """Token, CA and certificate, the load balancer, the launch template and the host group.

    Only names leave the component (parameters, the group, the load balancer's URL) and the CA
    certificate; the token and the keys stay in Pulumi state as secrets and in SSM.
    """

    url: pulumi.Output[str]
    """`https://<load balancer DNS>:<port>`."""
    grpc_target: pulumi.Output[str] | None
    """`<load balancer DNS>:<grpc port>` (a gRPC client's target), None when gRPC is off."""
    token_parameter_name: pulumi.Output[str]
    ca_certificate_pem: pulumi.Output[str]
    tls_cert_parameter_name: pulumi.Output[str]
    tls_key_parameter_name: pulumi.Output[str]
    group_name: pulumi.Output[str]

    def __init__(self, name: str, args: ServingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stratus:infra:Serving", name, None, opts)
        self._name, self._args = name, args
        self._tags = tags = component_tags(args.tags, "serving")
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
        balancer = Balancer(
            f"{name}-lb",
            BalancerArgs(
                vpc_id=args.vpc_id,
                subnet_ids=args.subnet_ids,
                security_group_id=args.lb_security_group_id,
                port=args.port,
                grpc_port=args.grpc_port,
                drain_seconds=args.drain_seconds,
                tags=args.tags,
            ),
            opts=child(self),
        )
        stack_tls = StackTls(
            f"{name}-tls",
            StackTlsArgs(
                load_balancer_dns=balancer.dns_name,
                region=args.region,
                key_arn=args.key_arn,
                cert_parameter_name=args.tls_cert_parameter_name,
                key_parameter_name=args.tls_key_parameter_name,
                organization=args.organization,
                tags=args.tags,
            ),
            opts=child(self),
        )
        template = self._launch_template()
        # The server reads the token and the TLS files at start: they must exist before a host boots.
        group = self._group(template, balancer.target_group_arns, [parameter, *stack_tls.parameters])
        self.url = pulumi.Output.concat("https://", balancer.dns_name, ":", str(args.port))
        self.grpc_target = pulumi.Output.concat(balancer.dns_name, ":", str(args.grpc_port)) if args.grpc_port else None
        self.token_parameter_name = parameter.name
        self.ca_certificate_pem = stack_tls.ca_certificate_pem
        self.tls_cert_parameter_name = stack_tls.cert_parameter_name
        self.tls_key_parameter_name = stack_tls.key_parameter_name
        self.group_name = group.name
        self.register_outputs({"url": self.url, "group_name": self.group_name})

    def _launch_template(self) -> aws.ec2.LaunchTemplate:
        name, args = self._name, self._args
        gpu = args.instance_type.gpus > 0
        image = find_image(gpu=gpu, override=args.ami_id, region=args.region)
        user_data = pulumi.Output.from_input(args.models_bucket).apply(
            lambda bucket: serving_user_data(
                region=args.region,
                models_bucket=bucket,
                model_name=args.model_name,
                port=args.port,
                grpc_port=args.grpc_port,
                token_parameter=args.token_parameter_name,
                tls_cert_parameter=args.tls_cert_parameter_name,
                tls_key_parameter=args.tls_key_parameter_name,
                gpu=gpu,
            )
        )
        host_tags = {**self._tags, "Name": f"{name}-host"}
        return aws.ec2.LaunchTemplate(
            f"{name}-launch-template",
            description=f"stratus serving hosts ({args.instance_type.name})",
            image_id=image.ami_id,
            instance_type=args.instance_type.name,
            iam_instance_profile={"name": args.instance_profile_name},
            metadata_options=IMDSV2_ONLY,
            block_device_mappings=[
                {
                    "device_name": image.root_device_name,
                    "ebs": {
                        "encrypted": "true",
                        "kms_key_id": args.key_arn,
                        "volume_type": "gp3",
                        "volume_size": args.root_volume_gb,
                        "delete_on_termination": "true",
                    },
                }
            ],
            # No subnet here: the group places each host in one of its subnets.
            network_interfaces=[
                {
                    "device_index": 0,
                    "security_groups": [args.security_group_id],
                    "associate_public_ip_address": "false",
                    "delete_on_termination": "true",
                }
            ],
            monitoring={"enabled": True},
            ebs_optimized="true",
            user_data=user_data.apply(lambda text: base64.b64encode(text.encode()).decode()),
            tag_specifications=[
                {"resource_type": kind, "tags": host_tags} for kind in ("instance", "volume", "network-interface")
            ],
            update_default_version=True,
            tags=self._tags,
            # An AMI looked up as "newest" (not pinned) must not roll the hosts when AWS publishes one.
            opts=child(self, ignore_changes=[] if args.ami_id else ["imageId"]),
        )

    def _group(self, template, target_group_arns, boot_after: list[pulumi.Resource]) -> aws.autoscaling.Group:
        name, args = self._name, self._args
        boot_seconds = BOOT_SECONDS_GPU if args.instance_type.gpus else BOOT_SECONDS_CPU
        ceiling = args.max_hosts if args.max_hosts is not None else args.num_hosts
        group = aws.autoscaling.Group(
            f"{name}-hosts",
            min_size=args.num_hosts,
            max_size=ceiling,
            desired_capacity=args.num_hosts,
            vpc_zone_identifiers=args.subnet_ids,
            # The template's latest version, not "$Latest": a new version starts the refresh.
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            target_group_arns=target_group_arns,
            health_check_type="ELB",
            health_check_grace_period=boot_seconds,
            default_instance_warmup=boot_seconds,
            instance_refresh={
                "strategy": "Rolling",
                "preferences": {
                    "min_healthy_percentage": REFRESH_MIN_HEALTHY_PERCENT,
                    "max_healthy_percentage": REFRESH_MAX_HEALTHY_PERCENT,
                    "instance_warmup": str(boot_seconds),
                    "auto_rollback": True,
                },
            },
            tags=[{"key": k, "value": v, "propagate_at_launch": False} for k, v in sorted(self._tags.items())],
            # Scaling moves the desired size; a later `pulumi up` must not reset it.
            opts=child(
                self,
                depends_on=boot_after,
                ignore_changes=["desiredCapacity"] if args.scale_cpu_percent is not None else [],
            ),
        )
        if args.scale_cpu_percent is not None:
            aws.autoscaling.Policy(
                f"{name}-cpu-scaling",
                autoscaling_group_name=group.name,
                policy_type="TargetTrackingScaling",
                estimated_instance_warmup=boot_seconds,
                target_tracking_configuration={
                    "predefined_metric_specification": {"predefined_metric_type": "ASGAverageCPUUtilization"},
                    "target_value": args.scale_cpu_percent,
                },
                opts=child(self),
            )
        return group
