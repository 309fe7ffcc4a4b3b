"""The serving hosts' internal Network Load Balancer: TCP listeners passing TLS through.

The load balancer never sees plaintext and holds no certificate: each listener is plain TCP
forwarding to a target group whose targets speak TLS on that port, and the target groups check
health over HTTPS on the server's readiness route. A host leaving the group gets no new
connections and `drain_seconds` to finish the requests in flight (the deregistration delay).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.base import child, component_tags

READINESS_PATH = "/v2/health/ready"
"""The server's readiness route (Open Inference Protocol): 200 once a model version is loaded,
an error while it drains."""
HEALTH_INTERVAL_S = 10
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 2


@dataclass(frozen=True, kw_only=True)
class BalancerArgs:
    """Inputs of `Balancer`."""

    vpc_id: pulumi.Input[str]
    """The stack's VPC."""
    subnet_ids: list[pulumi.Input[str]]
    """One private subnet per zone (the load balancer gets a node in each)."""
    security_group_id: pulumi.Input[str]
    """The load balancer's security group (clients' ranges in, the serving group out)."""
    port: int
    """REST port (HTTPS), on the listener and the hosts alike; also the health-check port."""
    tags: dict[str, str]
    """Base tags; the component adds `component: serving`."""
    grpc_port: int = 0
    """gRPC port (TLS); 0: no gRPC listener."""
    drain_seconds: int = 120
    """Deregistration delay of both target groups."""


class Balancer(pulumi.ComponentResource):
    """An internal NLB over the private subnets, one TCP listener and target group per port."""

    dns_name: pulumi.Output[str]
    arn: pulumi.Output[str]
    target_group_arns: list[pulumi.Output[str]]
    """REST first, then gRPC (when on): the Auto Scaling group registers its hosts in each."""

    def __init__(self, name: str, args: BalancerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stratus:infra:Balancer", name, None, opts)
        self._name, self._args = name, args
        self._tags = component_tags(args.tags, "serving")
        nlb = aws.lb.LoadBalancer(
            f"{name}-nlb",
            load_balancer_type="network",
            internal=True,
            subnets=args.subnet_ids,
            security_groups=[args.security_group_id],
            # A host in one zone serves clients of every zone: with 2 hosts in 2 zones, one zone
            # losing its host keeps both load-balancer nodes answering.
            enable_cross_zone_load_balancing=True,
            tags={**self._tags, "Name": f"{name}-nlb"},
            opts=child(self),
        )
        ports = [("https", args.port)] + ([("grpc", args.grpc_port)] if args.grpc_port else [])
        self.target_group_arns = [self._listener(nlb, label, port) for label, port in ports]
        self.dns_name = nlb.dns_name
        self.arn = nlb.arn
        self.register_outputs({"dns_name": self.dns_name})

    def _listener(self, nlb: aws.lb.LoadBalancer, label: str, port: int) -> pulumi.Output[str]:
        name, args = self._name, self._args
        group = aws.lb.TargetGroup(
            f"{name}-{label}-tg",
            vpc_id=args.vpc_id,
            target_type="instance",
            protocol="TCP",
            port=port,
            deregistration_delay=args.drain_seconds,
            health_check={
                "enabled": True,
                # The REST port carries readiness for both target groups: a host not ready for
                # REST is not ready for gRPC either (one data plane behind both).
                "protocol": "HTTPS",
                "port": str(args.port),
                "path": READINESS_PATH,
                "matcher": "200",
                "interval": HEALTH_INTERVAL_S,
                "healthy_threshold": HEALTHY_THRESHOLD,
                "unhealthy_threshold": UNHEALTHY_THRESHOLD,
            },
            tags={**self._tags, "Name": f"{name}-{label}-tg"},
            opts=child(self),
        )
        aws.lb.Listener(
            f"{name}-{label}-listener",
            load_balancer_arn=nlb.arn,
            # TCP, not TLS: the connection is passed through and TLS ends on the host, which
            # holds the certificate; the load balancer never decrypts.
            protocol="TCP",
            port=port,
            default_actions=[{"type": "forward", "target_group_arn": group.arn}],
            tags={**self._tags, "Name": f"{name}-{label}-listener"},
            opts=child(self),
        )
        return group.arn
