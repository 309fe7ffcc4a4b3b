"""Network: a private VPC over several zones, VPC endpoints, security groups and flow logs.

Also `lookup_zones`, the invokes that pick the zones the VPC spans, before `Network` is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.builders.netplan import SubnetPlan, ZonePlan, choose_zones, plan_subnets
from infra.builders.policies import FLOW_LOG_PREFIX
from infra.components.base import child, component_tags

HTTPS = 443
HTTP = 80


def lookup_zones(
    region: str, count: int, requested: str | None, instance_types: Mapping[str, str], live: bool
) -> ZonePlan:
    """Ask EC2 for the region's zones (and, when `live`, the zones offering each type).

    Args:
        region: the stack's region.
        count: `availability-zone-count`.
        requested: `training-availability-zone`.
        instance_types: config key -> instance type (`trainer-instance-type`,
            `serving-instance-type`); every type must be offered in the training zone, and a
            type offered nowhere is reported under its own key.
        live: `zone-offerings-lookup`; False trusts the region-level catalog only.

    Raises:
        ConfigError: from `choose_zones`.
    """
    available = aws.get_availability_zones(state="available", region=region).names
    type_keys: dict[str, str] = {}
    for key, instance_type in instance_types.items():
        type_keys.setdefault(instance_type, key)
    offering = None
    if live:
        offering = {}
        for instance_type in type_keys:
            result = aws.ec2.get_instance_type_offerings(
                filters=[{"name": "instance-type", "values": [instance_type]}],
                location_type="availability-zone",
                region=region,
            )
            offering[instance_type] = list(result.locations)
    return choose_zones(available, count, requested=requested, offering=offering, type_keys=type_keys)


@dataclass(frozen=True, kw_only=True)
class NetworkArgs:
    """Inputs of `Network`."""

    vpc_cidr: str
    """IPv4 range of the VPC."""
    zones: ZonePlan
    """Zones to span; `zones.training_zone` hosts the training nodes; serving hosts use every zone."""
    region: str
    """The stack's region (endpoint service names)."""
    serving_port: int
    """Inference port (HTTPS) of the load balancer and the hosts."""
    serving_allowed_cidrs: tuple[str, ...]
    """IPv4 ranges allowed to reach the load balancer's inference ports (HTTPS and gRPC)."""
    flow_log_bucket_arn: pulumi.Input[str]
    """ARN of the logs bucket that receives the VPC flow logs."""
    tags: dict[str, str]
    """Base tags; the component adds `component: network`."""
    serving_grpc_port: int = 0
    """Open Inference Protocol gRPC port opened to the same ranges as `serving_port`; 0: none."""
    egress_enabled: bool = False
    """Create a public subnet, internet gateway and NAT gateway for outbound internet."""
    interface_endpoints: tuple[str, ...] = ()
    """Interface endpoint services (`ssm`, `kms`, ...)."""
    flow_log_depends_on: list[pulumi.Resource] = field(default_factory=list)
    """Resources that must exist before the flow log (the logs bucket's policy)."""


class Network(pulumi.ComponentResource):
    """VPC with private subnets only (plus public/NAT when egress is on), endpoints, SGs.

    The default security group is stripped of all rules. The training group admits all traffic
    only from itself (NCCL, EFA, rendezvous); the load balancer's group admits the inference ports
    (HTTPS, and gRPC when configured) from the configured ranges, and the serving group admits
    them only from the load balancer's group. No rule opens SSH; operators use Session Manager.
    """

    vpc_id: pulumi.Output[str]
    private_subnet_ids: dict[str, pulumi.Output[str]]
    training_subnet_id: pulumi.Output[str]
    training_sg_id: pulumi.Output[str]
    serving_sg_id: pulumi.Output[str]
    lb_sg_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stratus:infra:Network", name, None, opts)
        self._name, self._args = name, args
        self._tags = component_tags(args.tags, "network")
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.vpc_cidr,
            # Private DNS of interface endpoints needs both DNS flags.
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=self._tagged(f"{name}-vpc"),
            opts=child(self),
        )
        self.vpc_id = vpc.id
        # Managing the default group without rules removes the rules AWS put there (EC2.2).
        aws.ec2.DefaultSecurityGroup(
            f"{name}-default-sg", vpc_id=vpc.id, tags=self._tagged("default"), opts=child(self)
        )
        plans = plan_subnets(args.vpc_cidr, args.zones.zones)
        private_rt = aws.ec2.RouteTable(
            f"{name}-private-rt", vpc_id=vpc.id, tags=self._tagged("private"), opts=child(self)
        )
        self.private_subnet_ids = {plan.zone: self._private_subnet(vpc, plan, private_rt) for plan in plans}
        self.training_subnet_id = self.private_subnet_ids[args.zones.training_zone]
        s3_prefix_list = self._endpoints(vpc, private_rt)
        if args.egress_enabled:
            self._egress_path(vpc, plans[0].zone, plans, private_rt)
        self._security_groups(vpc, s3_prefix_list)
        aws.ec2.FlowLog(
            f"{name}-flow-log",
            vpc_id=vpc.id,
            traffic_type="ALL",
            log_destination_type="s3",
            log_destination=pulumi.Output.concat(args.flow_log_bucket_arn, "/", FLOW_LOG_PREFIX),
            max_aggregation_interval=60,
            tags=self._tagged("flow-log"),
            opts=child(self, depends_on=args.flow_log_depends_on),
        )
        self.register_outputs({"vpc_id": self.vpc_id, "training_subnet_id": self.training_subnet_id})

    def _private_subnet(self, vpc: aws.ec2.Vpc, plan: SubnetPlan, route_table: aws.ec2.RouteTable):
        subnet = aws.ec2.Subnet(
            f"{self._name}-private-{plan.zone}",
            vpc_id=vpc.id,
            cidr_block=plan.private_cidr,
            availability_zone=plan.zone,
            map_public_ip_on_launch=False,
            tags=self._tagged(f"private-{plan.zone}", tier="private"),
            opts=child(self),
        )
        aws.ec2.RouteTableAssociation(
            f"{self._name}-private-{plan.zone}-rta",
            subnet_id=subnet.id,
            route_table_id=route_table.id,
            opts=child(self),
        )
        return subnet.id

    def _endpoints(self, vpc: aws.ec2.Vpc, private_rt: aws.ec2.RouteTable) -> pulumi.Output[str]:
        """The S3 gateway endpoint and the interface endpoints; returns S3's prefix list id."""
        name, args = self._name, self._args
        s3_endpoint = aws.ec2.VpcEndpoint(
            f"{name}-s3-endpoint",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[private_rt.id],
            tags=self._tagged("s3"),
            opts=child(self),
        )
        endpoint_sg = self._security_group("endpoints", vpc.id, "Interface VPC endpoints")
        self._ingress(
            "endpoints-https", endpoint_sg, HTTPS, "HTTPS to the interface endpoints from the VPC", cidr=args.vpc_cidr
        )
        for service in args.interface_endpoints:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}-endpoint",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{args.region}.{service}",
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=list(self.private_subnet_ids.values()),
                security_group_ids=[endpoint_sg.id],
                tags=self._tagged(service),
                opts=child(self),
            )
        return s3_endpoint.prefix_list_id

    def _security_groups(self, vpc: aws.ec2.Vpc, s3_prefix_list: pulumi.Output[str]) -> None:
        """Training group (cluster traffic only), load balancer and serving groups (inference ports only)."""
        args = self._args
        training_sg = self._security_group("training", vpc.id, "Training nodes: cluster only")
        cluster = "all traffic between training nodes (NCCL, EFA, rendezvous)"
        self._ingress("training-from-self", training_sg, None, cluster, source=training_sg)
        self._egress("training-to-self", training_sg, None, cluster, target=training_sg)
        serving_sg = self._security_group("serving", vpc.id, "Serving hosts: inference ports from the load balancer")
        lb_sg = self._security_group("lb", vpc.id, "Serving load balancer: inference ports from the allowed ranges")
        ports = [("inference", args.serving_port, "inference port (HTTPS)")]
        if args.serving_grpc_port:
            ports.append(("grpc", args.serving_grpc_port, "inference gRPC port (Open Inference Protocol over TLS)"))
        for label, port, what in ports:
            for i, cidr in enumerate(args.serving_allowed_cidrs):
                self._ingress(f"lb-{label}-{i}", lb_sg, port, f"{what} from an allowed range ({cidr})", cidr=cidr)
            # The load balancer's group, not a range: with client IP preservation the hosts see the
            # clients' addresses, and the reference still admits exactly what the load balancer forwards.
            self._ingress(f"serving-{label}-from-lb", serving_sg, port, f"{what} from the load balancer", source=lb_sg)
            self._egress(
                f"lb-{label}-to-serving", lb_sg, port, f"{what} and health checks to the hosts", target=serving_sg
            )
        for role, sg in (("training", training_sg), ("serving", serving_sg)):
            self._egress(
                f"{role}-https-s3", sg, HTTPS, "HTTPS to S3 through the gateway endpoint", prefix_list=s3_prefix_list
            )
            self._egress(f"{role}-https-vpc", sg, HTTPS, "HTTPS to the interface endpoints", cidr=args.vpc_cidr)
            if args.egress_enabled:
                self._egress(
                    f"{role}-https-internet",
                    sg,
                    HTTPS,
                    "HTTPS to the internet through the NAT gateway",
                    cidr="0.0.0.0/0",  # egress, not ingress; only with egress-enabled (docs/security.md)
                )
                # Debian/Ubuntu mirrors serve over HTTP (apt checks the signed indexes instead of TLS):
                # without it an Ubuntu AMI's `apt-get update` hangs. Only with egress-enabled.
                self._egress(
                    f"{role}-http-internet",
                    sg,
                    HTTP,
                    "HTTP to package mirrors through the NAT gateway (apt verifies signed indexes)",
                    cidr="0.0.0.0/0",  # egress, not ingress; only with egress-enabled (docs/security.md)
                )
        self.training_sg_id, self.serving_sg_id, self.lb_sg_id = training_sg.id, serving_sg.id, lb_sg.id

    def _tagged(self, label: str, **extra: str) -> dict[str, str]:
        return {**self._tags, "Name": f"{self._name}-{label}", **extra}

    def _egress_path(self, vpc, zone: str, plans, private_rt) -> None:
        name = self._name
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=self._tagged("igw"), opts=child(self))
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt", vpc_id=vpc.id, tags=self._tagged("public"), opts=child(self)
        )
        aws.ec2.Route(
            f"{name}-public-default-route",
            route_table_id=public_rt.id,
            destination_cidr_block="0.0.0.0/0",  # a route, not ingress (docs/security.md)
            gateway_id=igw.id,
            opts=child(self),
        )
        # One NAT gateway (in the training zone) keeps cost down; egress is for installs only.
        plan = next(p for p in plans if p.zone == zone)
        public = aws.ec2.Subnet(
            f"{name}-public-{zone}",
            vpc_id=vpc.id,
            cidr_block=plan.public_cidr,
            availability_zone=zone,
            map_public_ip_on_launch=False,
            tags=self._tagged(f"public-{zone}", tier="public"),
            opts=child(self),
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-public-{zone}-rta",
            subnet_id=public.id,
            route_table_id=public_rt.id,
            opts=child(self),
        )
        eip = aws.ec2.Eip(f"{name}-nat-eip", domain="vpc", tags=self._tagged("nat"), opts=child(self))
        nat = aws.ec2.NatGateway(
            f"{name}-nat",
            subnet_id=public.id,
            allocation_id=eip.allocation_id,
            tags=self._tagged("nat"),
            opts=child(self, depends_on=[igw]),
        )
        aws.ec2.Route(
            f"{name}-private-default-route",
            route_table_id=private_rt.id,
            destination_cidr_block="0.0.0.0/0",  # a route, not ingress (docs/security.md)
            nat_gateway_id=nat.id,
            opts=child(self),
        )

    def _security_group(self, role: str, vpc_id, description: str) -> aws.ec2.SecurityGroup:
        # Rules are separate resources (aws.vpc.*Rule), the form AWS provider v6+ recommends.
        return aws.ec2.SecurityGroup(
            f"{self._name}-{role}-sg",
            vpc_id=vpc_id,
            description=description,
            tags=self._tagged(f"{role}-sg"),
            opts=child(self),
        )

    def _rule_args(self, port, cidr, peer, prefix_list) -> dict:
        args: dict = {"ip_protocol": "-1"} if port is None else {"ip_protocol": "tcp"}
        if port is not None:
            args.update(from_port=port, to_port=port)
        if cidr is not None:
            args["cidr_ipv4"] = cidr
        if peer is not None:
            args["referenced_security_group_id"] = peer.id
        if prefix_list is not None:
            args["prefix_list_id"] = prefix_list
        return args

    def _ingress(self, label, sg, port, description: str, *, cidr=None, source=None) -> None:
        aws.vpc.SecurityGroupIngressRule(
            f"{self._name}-{label}",
            security_group_id=sg.id,
            description=description,
            tags=self._tagged(label),
            **self._rule_args(port, cidr, source, None),
            opts=child(self),
        )

    def _egress(self, label, sg, port, description: str, *, cidr=None, target=None, prefix_list=None) -> None:
        aws.vpc.SecurityGroupEgressRule(
            f"{self._name}-{label}",
            security_group_id=sg.id,
            description=description,
            tags=self._tagged(label),
            **self._rule_args(port, cidr, target, prefix_list),
            opts=child(self),
        )
