"""Training on its own under mocks: the node group, EFA interfaces, markets, placement, the AMI.

Field names are pulumi-aws 7's (`aws.autoscaling.Group`, `aws.ec2.LaunchTemplate`), as the engine
records them (camelCase); they map one to one onto the EC2 Auto Scaling `CreateAutoScalingGroup`
and EC2 `CreateLaunchTemplate` request fields (`VPCZoneIdentifier`, `PlacementGroup`,
`CapacityRebalance`, `NetworkInterfaces[].InterfaceType`/`NetworkCardIndex`/`DeviceIndex`, ...).
"""

from __future__ import annotations

import inspect
import re

import pytest

from infra.components.training import BOOT_SECONDS, Training, TrainingArgs, network_interfaces
from infra.config.catalog import AMI_FAMILIES, CATALOG
from infra.tools.offline import StratusMocks, run
from tests.infra import checks
from tests.infra.components.support import KEY, TAGS

GROUP = "aws:autoscaling/group:Group"
RESERVATION = {"capacity_reservation_id": "cr-0a1b2c3d4e5f60718"}


def training_run(instance_type: str, mocks=None, **overrides):
    args = dict(
        instance_type=CATALOG[instance_type],
        num_nodes=3,
        subnet_id="subnet-1",
        security_group_id="sg-1",
        instance_profile_arn="arn:aws:iam::1:instance-profile/t",
        key_arn=KEY,
        user_data="#!/bin/bash\n",
        region="us-east-1",
        tags=TAGS,
    )
    return run(lambda: {"t": Training("training", TrainingArgs(**{**args, **overrides}))}, mocks=mocks)


def _cards(lt) -> list[tuple]:
    return [(i["networkCardIndex"], i["deviceIndex"], i["interfaceType"]) for i in lt.inputs["networkInterfaces"]]


def test_p4d_nodes_get_efa_on_card_0_efa_only_on_the_other_cards_and_spot_rebalancing():
    mocks = StratusMocks()
    result = training_run("p4d.24xlarge", mocks=mocks, market="spot", spot_max_price=12.5)
    (lt,) = result.of_type(checks.LT)
    assert _cards(lt) == [(0, 0, "efa"), (1, 0, "efa-only"), (2, 0, "efa-only"), (3, 0, "efa-only")]
    assert all("subnetId" not in i for i in lt.inputs["networkInterfaces"])  # the group's subnet decides
    assert lt.inputs["instanceMarketOptions"]["marketType"] == "spot"
    assert lt.inputs["instanceMarketOptions"]["spotOptions"]["maxPrice"] == "12.5"
    assert "capacityReservationSpecification" not in lt.inputs
    (group,) = result.of_type(GROUP)
    assert group.inputs["capacityRebalance"] is True
    (placement,) = result.of_type("aws:ec2/placementGroup:PlacementGroup")
    assert placement.inputs["strategy"] == "cluster" and group.inputs["placementGroup"] == placement.state["name"]
    assert "placement" not in lt.inputs  # one place for it: the group
    assert result.of_type(checks.INSTANCE) == []
    assert checks.volume_encryption(result, keys={KEY}) == []
    for check in (checks.imdsv2, checks.no_public_ips, checks.tags_present):
        assert check(result) == [], check.__name__


def test_the_group_keeps_exactly_the_node_count_from_the_latest_template_in_the_training_subnet():
    result = training_run("g5.12xlarge")
    (group,), (lt,) = result.of_type(GROUP), result.of_type(checks.LT)
    i = group.inputs
    assert (i["minSize"], i["maxSize"], i["desiredCapacity"]) == (3, 3, 3)
    assert i["vpcZoneIdentifiers"] == ["subnet-1"]
    assert i["launchTemplate"] == {"id": lt.id, "version": str(lt.state["latestVersion"])}
    assert (i["healthCheckType"], i["healthCheckGracePeriod"]) == ("EC2", BOOT_SECONDS)
    assert "capacityRebalance" not in i and "instanceRefresh" not in i
    assert "launchConfiguration" not in i and "mixedInstancesPolicy" not in i
    tags = {t["key"]: (t["value"], t["propagateAtLaunch"]) for t in i["tags"]}
    assert tags == {
        "project": ("stratus", True),
        "stack": ("dev", True),
        "component": ("training", True),
        "Name": ("training-node", True),
    }
    assert result.outputs["t"].group_name is not None


def test_p5_on_a_capacity_block_gets_efa_only_interfaces_after_card_0_and_targets_the_block():
    result = training_run("p5.48xlarge", market="capacity-block", reservation_target=RESERVATION, placement_group=False)
    (lt,) = result.of_type(checks.LT)
    cards = _cards(lt)
    assert cards[0] == (0, 0, "efa")
    assert cards[1:] == [(card, 0, "efa-only") for card in range(1, 32)]
    assert lt.inputs["instanceMarketOptions"] == {"marketType": "capacity-block"}
    assert lt.inputs["capacityReservationSpecification"] == {
        "capacityReservationTarget": {"capacityReservationId": RESERVATION["capacity_reservation_id"]}
    }
    (group,) = result.of_type(GROUP)
    assert "placementGroup" not in group.inputs and "capacityRebalance" not in group.inputs
    assert result.of_type("aws:ec2/placementGroup:PlacementGroup") == []


@pytest.mark.parametrize("name", [t.name for t in CATALOG.values() if t.gpus])
def test_only_card_0_carries_an_ip_where_the_catalog_records_efa_only(name):
    instance_type = CATALOG[name]
    interfaces = network_interfaces(instance_type, "sg-1")
    with_ip = [i for i in interfaces if i.get("interface_type") != "efa-only"]
    assert len(with_ip) == instance_type.ip_interfaces
    assert len(interfaces) == max(1, instance_type.efa_interfaces)
    assert interfaces[0]["device_index"] == 0 and interfaces[0].get("network_card_index", 0) == 0


def test_follow_launch_template_rolls_all_nodes_at_once():
    result = training_run("g5.12xlarge", follow_launch_template=True)
    (group,) = result.of_type(GROUP)
    prefs = group.inputs["instanceRefresh"]["preferences"]
    assert group.inputs["instanceRefresh"]["strategy"] == "Rolling"
    assert (prefs["minHealthyPercentage"], prefs["maxHealthyPercentage"]) == (0, 100)


def test_the_image_comes_from_the_families_ssm_parameter_unless_pinned():
    family = AMI_FAMILIES["pytorch-2.13"]
    mocks = StratusMocks()
    result = training_run("g5.12xlarge", mocks=mocks, ami_parameter=family.ssm_parameter)
    (call,) = [a for t, a in mocks.invokes if t == "aws:ssm/getParameter:getParameter"]
    assert (
        call["name"]
        == "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.13-amazon-linux-2023/latest/ami-id"
    )
    (described,) = [a for t, a in mocks.invokes if t == "aws:ec2/getAmi:getAmi"]
    (lt,) = result.of_type(checks.LT)
    assert described["filters"] == [{"name": "image-id", "values": [lt.inputs["imageId"]]}]
    pinned_mocks = StratusMocks()
    pinned = training_run(
        "g5.12xlarge",
        mocks=pinned_mocks,
        scratch_volume_gb=0,
        ami_id="ami-0123456789abcdef0",
        ami_parameter=family.ssm_parameter,
    )
    (lt,) = pinned.of_type(checks.LT)
    assert lt.inputs["imageId"] == "ami-0123456789abcdef0"
    assert not [t for t, _ in pinned_mocks.invokes if t.startswith("aws:ssm/")]
    assert [i.get("interfaceType") for i in lt.inputs["networkInterfaces"]] == [None]
    assert "instanceMarketOptions" not in lt.inputs
    assert [m["deviceName"] for m in lt.inputs["blockDeviceMappings"]] == ["/dev/xvda"]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _params(cls) -> set[str]:
    init = getattr(cls, "_internal_init", None) or cls.__init__
    return set(inspect.signature(init).parameters) - {"self", "__self__", "resource_name", "opts"}


def test_every_field_is_a_pulumi_aws_7_argument_of_its_block():
    """A misspelt field would be sent as is and refused only by a real preview: each recorded
    field must be an argument of the SDK class (or nested block class) that declares it."""
    import pulumi_aws as aws

    result = training_run("p5.48xlarge", market="spot", spot_max_price=40.0, follow_launch_template=True)
    (group,), (lt,) = result.of_type(GROUP), result.of_type(checks.LT)
    blocks = [
        (group.inputs, aws.autoscaling.Group),
        (group.inputs["launchTemplate"], aws.autoscaling.GroupLaunchTemplateArgs),
        (group.inputs["instanceRefresh"], aws.autoscaling.GroupInstanceRefreshArgs),
        (group.inputs["instanceRefresh"]["preferences"], aws.autoscaling.GroupInstanceRefreshPreferencesArgs),
        *((tag, aws.autoscaling.GroupTagArgs) for tag in group.inputs["tags"]),
        (lt.inputs, aws.ec2.LaunchTemplate),
        (lt.inputs["instanceMarketOptions"], aws.ec2.LaunchTemplateInstanceMarketOptionsArgs),
        (lt.inputs["instanceMarketOptions"]["spotOptions"], aws.ec2.LaunchTemplateInstanceMarketOptionsSpotOptionsArgs),
        (lt.inputs["metadataOptions"], aws.ec2.LaunchTemplateMetadataOptionsArgs),
        *((ni, aws.ec2.LaunchTemplateNetworkInterfaceArgs) for ni in lt.inputs["networkInterfaces"]),
    ]
    for fields, cls in blocks:
        unknown = {_snake(k) for k in fields} - _params(cls)
        assert not unknown, f"{cls.__name__} has no {sorted(unknown)}"
    block = training_run("p5.48xlarge", market="capacity-block", reservation_target=RESERVATION, placement_group=False)
    (lt,) = block.of_type(checks.LT)
    spec = lt.inputs["capacityReservationSpecification"]
    assert {_snake(k) for k in spec} <= _params(aws.ec2.LaunchTemplateCapacityReservationSpecificationArgs)
    target = spec["capacityReservationTarget"]
    assert {_snake(k) for k in target} <= _params(
        aws.ec2.LaunchTemplateCapacityReservationSpecificationCapacityReservationTargetArgs
    )
