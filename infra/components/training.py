"""Training nodes: N GPU instances from one launch template in a cluster placement group."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.builders.userdata import SCRATCH_DEVICE
from infra.components.base import IMDSV2_ONLY, child, component_tags, instance_settings
from infra.components.images import Image, find_image
from infra.config.catalog import InstanceType


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
    instance_profile_name: pulumi.Input[str]
    """Its name (repeated on each instance, where scanners look for it)."""
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
    """Pinned AMI; None looks up the newest Deep Learning AMI."""
    follow_launch_template: bool = False
    """Replace running nodes when the launch template changes; False: they ignore the change."""
    root_volume_gb: int = 200
    """Root volume size."""
    scratch_volume_gb: int = 0
    """EBS scratch volume size at /dev/sdf; 0 for none (local NVMe or no scratch)."""
    scratch_iops: int = 3000
    """gp3 IOPS of the scratch volume."""
    scratch_throughput_mibps: int = 125
    """gp3 throughput of the scratch volume."""


def network_interfaces(efa_interfaces: int, subnet_id, security_group_id) -> list[dict]:
    """Launch-template interfaces: one EFA per EFA-capable network card, else one plain ENI.

    EC2 wants the primary interface at device index 0 of card 0 and every further card's
    interface at device index 1. None gets a public IP.
    """
    common = {
        "subnet_id": subnet_id,
        "security_groups": [security_group_id],
        "associate_public_ip_address": "false",
        "delete_on_termination": "true",
    }
    if efa_interfaces == 0:
        return [{"device_index": 0, **common}]
    return [
        {"network_card_index": card, "device_index": 0 if card == 0 else 1, "interface_type": "efa", **common}
        for card in range(efa_interfaces)
    ]


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
    """Placement group, launch template (IMDSv2, encrypted EBS, EFA, trainer profile), nodes.

    Nodes ignore later changes of their launch template (a newer AMI, new user data) unless
    `follow_launch_template`: a routine `pulumi up` never replaces them.
    """

    instance_ids: pulumi.Output[list[str]]
    private_ips: pulumi.Output[list[str]]
    slots_per_node: int
    image: Image

    def __init__(self, name: str, args: TrainingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stratus:infra:Training", name, None, opts)
        tags = component_tags(args.tags, "training")
        self.image = image = find_image(gpu=True, override=args.ami_id, region=args.region)
        placement = None
        if args.placement_group:
            # Cluster placement keeps all nodes on one low-latency segment for NCCL all-reduce.
            group = aws.ec2.PlacementGroup(f"{name}-placement", strategy="cluster", tags=tags, opts=child(self))
            placement = {"group_name": group.name}
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
        template = aws.ec2.LaunchTemplate(
            f"{name}-launch-template",
            description=f"stratus training nodes ({args.instance_type.name})",
            image_id=image.ami_id,
            instance_type=args.instance_type.name,
            iam_instance_profile={"arn": args.instance_profile_arn},
            metadata_options=IMDSV2_ONLY,
            block_device_mappings=devices,
            network_interfaces=network_interfaces(
                args.instance_type.efa_interfaces, args.subnet_id, args.security_group_id
            ),
            placement=placement,
            instance_market_options=market_options(args),
            capacity_reservation_specification=reservation_options(args),
            monitoring={"enabled": True},
            ebs_optimized="true",
            user_data=pulumi.Output.from_input(args.user_data).apply(
                lambda text: base64.b64encode(text.encode()).decode()
            ),
            tag_specifications=[
                {"resource_type": kind, "tags": tags} for kind in ("instance", "volume", "network-interface")
            ],
            update_default_version=True,
            tags=tags,
            opts=child(self),
        )
        nodes = [self._node(name, i, args, template, image, tags) for i in range(args.num_nodes)]
        self.instance_ids = pulumi.Output.all(*(n.id for n in nodes))
        self.private_ips = pulumi.Output.all(*(n.private_ip for n in nodes))
        self.slots_per_node = args.instance_type.gpus
        self.register_outputs({"instance_ids": self.instance_ids, "private_ips": self.private_ips})

    def _node(self, name: str, i: int, args: TrainingArgs, template, image: Image, tags) -> aws.ec2.Instance:
        # A new template version (AMI, user data) would replace the node: ignored unless asked.
        ignore = [] if args.follow_launch_template else ["launchTemplate", "rootBlockDevice"]
        return aws.ec2.Instance(
            f"{name}-node-{i}",
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            # Repeated from the template on purpose: an instance-level setting wins over the
            # template (IMDSv2 holds even if someone edits it), and scanners read the instance.
            **instance_settings(
                key_arn=args.key_arn, root_volume_gb=args.root_volume_gb, profile_name=args.instance_profile_name
            ),
            tags={**tags, "Name": f"{name}-node-{i}"},
            opts=child(self, ignore_changes=ignore),
        )
