"""Training nodes: an EC2 Auto Scaling group of N GPU instances from one launch template.

The group keeps `num_nodes` running (minimum = maximum = desired): a node lost to a spot
interruption, a failed health check or a Capacity Block's end is replaced by a new instance (new
id, new private IP) from the same template, in the same subnet and placement group. The
launcher reads the live ids and IPs from the group (`trainer_autoscaling_group`), not from stack
outputs frozen at `pulumi up`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.builders.userdata import SCRATCH_DEVICE
from infra.components.base import IMDSV2_ONLY, child, component_tags
from infra.components.images import Image, find_image
from infra.config.catalog import InstanceType

BOOT_SECONDS = 1800
"""Health-check grace of a new node: the first boot installs the runtime bundle and builds the
ops (`stratus-prepare.service`) before anything should judge it."""
CAPACITY_WAIT = "15m"
"""How long `pulumi up` waits for the group to reach its size (a p5 boot with 32 interfaces and
a Capacity Block's start take minutes); past it the update fails instead of hanging."""


@dataclass(frozen=True, kw_only=True)
class TrainingArgs:
    """Inputs of `Training`."""

    instance_type: InstanceType
    """Catalog entry of the GPU type (its `efa_interfaces` decides the network cards)."""
    num_nodes: int
    """Number of training nodes."""
    subnet_id: pulumi.Input[str]
    """Private subnet in the training zone."""
    security_group_id: pulumi.Input[str]
    """The training security group (all traffic from itself only)."""
    instance_profile_arn: pulumi.Input[str]
    """Trainer instance profile (launch template)."""
    key_arn: pulumi.Input[str]
    """The stack key, for root and scratch volumes."""
    user_data: pulumi.Input[str]
    """Plain-text user data (no secrets); base64-encoded here for the launch template."""
    region: str
    """The stack's region."""
    tags: dict[str, str]
    """Base tags; the component adds `component: training`."""
    market: str = "on-demand"
    """`on-demand`, `spot` (with `spot_max_price`) or `capacity-block` (with `reservation_target`)."""
    spot_max_price: float | None = None
    """Spot price cap in USD/h."""
    reservation_target: dict[str, str] | None = None
    """`capacity_reservation_target` (a reservation id or resource group ARN); None: none."""
    reservation_preference: str = "open"
    """Without a target: `open` or `none`."""
    placement_group: bool = True
    """Create a cluster placement group for the nodes."""
    ami_id: str | None = None
    """Pinned AMI; None: the image `ami_parameter` names (or, without one, the newest by name)."""
    ami_parameter: str | None = None
    """SSM public parameter of the Deep Learning AMI family (`AmiFamily.ssm_parameter`)."""
    follow_launch_template: bool = False
    """Roll the nodes (an instance refresh) when the launch template changes; False: running
    nodes keep their image and user data, and only replacements get the new version."""
    root_volume_gb: int = 200
    """Root volume size."""
    scratch_volume_gb: int = 0
    """EBS scratch volume size at /dev/sdf; 0 for none (local NVMe or no scratch)."""
    scratch_iops: int = 3000
    """gp3 IOPS of the scratch volume."""
    scratch_throughput_mibps: int = 125
    """gp3 throughput of the scratch volume."""


def network_interfaces(instance_type: InstanceType, security_group_id) -> list[dict]:
    """Launch-template interfaces: EFA on every EFA-capable network card, else one plain ENI.

    Card 0 holds the primary interface (device index 0), an `efa` interface (EFA with ENA, the
    node's IP address). Types with `efa_only` take `efa-only` interfaces at device index 0 of
    cards 1..N-1 (no IP address: one subnet address per node instead of one per card, as AWS
    configures P5); other EFA types take `efa` interfaces at device index 1 of every further
    card. No subnet here: the Auto Scaling group places every interface in its subnet. None gets a
    public IP.
    """
    common = {
        "security_groups": [security_group_id],
        "associate_public_ip_address": "false",
        "delete_on_termination": "true",
    }
    if instance_type.efa_interfaces == 0:
        return [{"device_index": 0, **common}]
    interfaces = [{"network_card_index": 0, "device_index": 0, "interface_type": "efa", **common}]
    for card in range(1, instance_type.efa_interfaces):
        if instance_type.efa_only:
            interfaces.append({"network_card_index": card, "device_index": 0, "interface_type": "efa-only", **common})
        else:
            interfaces.append({"network_card_index": card, "device_index": 1, "interface_type": "efa", **common})
    return interfaces


def market_options(args: TrainingArgs) -> dict | None:
    """`instance_market_options` of the launch template: spot, a Capacity Block, or None."""
    if args.market == "spot":
        return {
            "market_type": "spot",
            "spot_options": {
                "max_price": str(args.spot_max_price),
                "spot_instance_type": "one-time",
                "instance_interruption_behavior": "terminate",
            },
        }
    if args.market == "capacity-block":
        return {"market_type": "capacity-block"}
    return None


def reservation_options(args: TrainingArgs) -> dict | None:
    """`capacity_reservation_specification`: the target, or the preference without one; None for
    spot nodes, which never use Capacity Reservations."""
    if args.market == "spot":
        return None
    if args.reservation_target is not None:
        return {"capacity_reservation_target": args.reservation_target}
    return {"capacity_reservation_preference": args.reservation_preference}


class Training(pulumi.ComponentResource):
    """Placement group, launch template (IMDSv2, encrypted EBS, EFA, trainer profile), node group.

    A routine `pulumi up` never replaces running nodes: a new template version (AMI, user data)
    reaches only the nodes launched after it, unless `follow_launch_template` starts a refresh.
    """

    group_name: pulumi.Output[str]
    """Name of the nodes' Auto Scaling group (the launcher lists its instances)."""
    slots_per_node: int
    image: Image

    def __init__(self, name: str, args: TrainingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stratus:infra:Training", name, None, opts)
        tags = component_tags(args.tags, "training")
        self.image = image = find_image(
            gpu=True, override=args.ami_id, region=args.region, ssm_parameter=args.ami_parameter
        )
        placement = None
        if args.placement_group:
            # Cluster placement keeps all nodes on one low-latency segment for NCCL all-reduce.
            placement = aws.ec2.PlacementGroup(f"{name}-placement", strategy="cluster", tags=tags, opts=child(self))
        template = self._launch_template(name, args, image, tags)
        group = self._group(name, args, template, placement, tags)
        self.group_name = group.name
        self.slots_per_node = args.instance_type.gpus
        self.register_outputs({"group_name": self.group_name})

    def _launch_template(self, name: str, args: TrainingArgs, image: Image, tags) -> aws.ec2.LaunchTemplate:
        volume = {
            "encrypted": "true",
            "kms_key_id": args.key_arn,
            "volume_type": "gp3",
            "delete_on_termination": "true",
        }
        devices = [
            {"device_name": image.root_device_name, "ebs": {**volume, "volume_size": args.root_volume_gb}},
        ]
        if args.scratch_volume_gb:
            devices.append(
                {
                    "device_name": SCRATCH_DEVICE,
                    "ebs": {
                        **volume,
                        "volume_size": args.scratch_volume_gb,
                        "iops": args.scratch_iops,
                        "throughput": args.scratch_throughput_mibps,
                    },
                }
            )
        node_tags = {**tags, "Name": f"{name}-node"}
        return aws.ec2.LaunchTemplate(
            f"{name}-launch-template",
            description=f"stratus training nodes ({args.instance_type.name})",
            image_id=image.ami_id,
            instance_type=args.instance_type.name,
            iam_instance_profile={"arn": args.instance_profile_arn},
            metadata_options=IMDSV2_ONLY,
            block_device_mappings=devices,
            network_interfaces=network_interfaces(args.instance_type, args.security_group_id),
            instance_market_options=market_options(args),
            capacity_reservation_specification=reservation_options(args),
            monitoring={"enabled": True},
            ebs_optimized="true",
            user_data=pulumi.Output.from_input(args.user_data).apply(
                lambda text: base64.b64encode(text.encode()).decode()
            ),
            tag_specifications=[
                {"resource_type": kind, "tags": node_tags} for kind in ("instance", "volume", "network-interface")
            ],
            update_default_version=True,
            tags=tags,
            # Unpinned, AWS's next image must not reach a replacement node while the others run the
            # current one (torch, NCCL and the EFA stack would differ across the set): pin to move.
            opts=child(self, ignore_changes=[] if args.ami_id else ["imageId"]),
        )

    def _group(self, name: str, args: TrainingArgs, template, placement, tags) -> aws.autoscaling.Group:
        refresh = None
        if args.follow_launch_template:
            # All nodes at once: a training run needs the whole set, and a block or a reservation
            # has no room for extra nodes to roll through.
            refresh = {
                "strategy": "Rolling",
                "preferences": {"min_healthy_percentage": 0, "max_healthy_percentage": 100},
            }
        return aws.autoscaling.Group(
            f"{name}-nodes",
            min_size=args.num_nodes,
            max_size=args.num_nodes,
            desired_capacity=args.num_nodes,
            vpc_zone_identifiers=[args.subnet_id],
            # The template's latest version, not "$Latest": the group records which one it launches.
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            placement_group=placement.name if placement is not None else None,
            # Spot: start a replacement when EC2 signals a rebalance risk, before the interruption.
            capacity_rebalance=True if args.market == "spot" else None,
            health_check_type="EC2",
            health_check_grace_period=BOOT_SECONDS,
            wait_for_capacity_timeout=CAPACITY_WAIT,
            instance_refresh=refresh,
            tags=[
                {"key": k, "value": v, "propagate_at_launch": True}
                for k, v in sorted({**tags, "Name": f"{name}-node"}.items())
            ],
            opts=child(self),
        )
