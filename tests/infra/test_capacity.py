"""Capacity: reservation targeting, Capacity Blocks, the placement-group rule, the quota check,
AMI pinning and names unique per organization/project/stack, each with its negative case."""

from __future__ import annotations

from decimal import Decimal

import pytest

from infra.config.cost import estimate_cost
from infra.config.errors import ConfigError
from infra.config.quota import QuotaError, check_quota, quota_needs
from infra.config.stack import parse_config
from infra.tools.offline import ROOT, StratusMocks, load_stack_config, run_program
from tests.infra.support import example_config

LT = "aws:ec2/launchTemplate:LaunchTemplate"
PG = "aws:ec2/placementGroup:PlacementGroup"
BLOCK = ROOT / "examples" / "Pulumi.p5-capacity-block.yaml"
RID = "cr-0a1b2c3d4e5f60718"
GROUP = "arn:aws:resource-groups:us-east-1:123456789012:group/gpus"


@pytest.fixture(scope="module")
def block_run():
    return run_program(load_stack_config(BLOCK), mocks=StratusMocks())


def test_capacity_block_launches_into_the_block_without_a_placement_group(block_run):
    lt = block_run.named("training-launch-template")
    assert lt.inputs["instanceMarketOptions"] == {"marketType": "capacity-block"}
    assert lt.inputs["capacityReservationSpecification"] == {
        "capacityReservationTarget": {"capacityReservationId": RID}
    }
    assert block_run.of_type(PG) == [] and "placement" not in lt.inputs
    # p5 scratch: the eight local NVMe disks, no EBS scratch volume
    assert [m["deviceName"] for m in lt.inputs["blockDeviceMappings"]] == ["/dev/xvda"]


def test_capacity_block_is_priced_at_the_block_price():
    cfg = parse_config({k.removeprefix("stratus:"): v for k, v in load_stack_config(BLOCK).items()})
    lines = {line.item: line.usd_per_hour for line in estimate_cost(cfg).lines}
    assert lines["training node p5.48xlarge (capacity block)"] == Decimal("125.8560")  # 4 x 31.464
    unpriced = parse_config({**cfg_raw(), "trainer-capacity-block-usd-per-hour": None})
    lines = {line.item: line.usd_per_hour for line in estimate_cost(unpriced).lines}
    assert lines["training node p5.48xlarge (capacity block, on-demand price)"] == Decimal("220.1600")


def cfg_raw() -> dict:
    raw = {k.removeprefix("stratus:"): v for k, v in load_stack_config(BLOCK).items()}
    return {k: v for k, v in raw.items() if k != "trainer-capacity-block-usd-per-hour"}


def test_open_and_targeted_reservations_and_the_placement_group_rule():
    plain = run_program(example_config())
    lt = plain.named("training-launch-template")
    assert lt.inputs["capacityReservationSpecification"] == {"capacityReservationPreference": "open"}
    assert "instanceMarketOptions" not in lt.inputs and len(plain.of_type(PG)) == 1
    targeted = run_program(
        example_config(**{"trainer-capacity-reservation-group-arn": GROUP, "training-availability-zone": "us-east-1b"})
    )
    lt = targeted.named("training-launch-template")
    assert lt.inputs["capacityReservationSpecification"] == {
        "capacityReservationTarget": {"capacityReservationResourceGroupArn": GROUP}
    }
    assert targeted.of_type(PG) == []
    off = run_program(example_config(**{"trainer-placement-group": False}))
    assert off.of_type(PG) == []


def test_spot_nodes_carry_no_reservation_settings(efa_spot_run):
    lt = efa_spot_run.named("training-launch-template")
    assert lt.inputs["instanceMarketOptions"]["marketType"] == "spot"
    assert "capacityReservationSpecification" not in lt.inputs


BAD = {
    "block-without-id": (
        {"trainer-instance-type": "p5.48xlarge", "trainer-market": "capacity-block"},
        "trainer-capacity-reservation-id",
        "is required with `trainer-market: capacity-block`",
    ),
    "reservation-without-zone": (
        {"trainer-capacity-reservation-id": RID, "training-availability-zone": None},
        "training-availability-zone",
        "describe-capacity-reservations",
    ),
    "block-on-g5": (
        {"trainer-market": "capacity-block", "trainer-capacity-reservation-id": RID},
        "trainer-instance-type",
        "not sold as a Capacity Block",
    ),
    "price-without-block": (
        {"trainer-capacity-block-usd-per-hour": 30},
        "trainer-capacity-block-usd-per-hour",
        "is set but `trainer-market` is on-demand",
    ),
    "bad-id": ({"trainer-capacity-reservation-id": "cr-123"}, "trainer-capacity-reservation-id", "not a Capacity"),
    "id-and-group": (
        {"trainer-capacity-reservation-id": RID, "trainer-capacity-reservation-group-arn": GROUP},
        "trainer-capacity-reservation-group-arn",
        "not both",
    ),
    "spot-reserved": (
        {"trainer-market": "spot", "trainer-spot-max-price": 3, "trainer-capacity-reservation-id": RID},
        "trainer-market",
        "cannot launch into a Capacity Reservation",
    ),
    "group-forced-with-target": (
        {"trainer-capacity-reservation-id": RID, "trainer-placement-group": True},
        "trainer-placement-group",
        "decides their placement",
    ),
    "preference-with-target": (
        {"trainer-capacity-reservation-id": RID, "trainer-capacity-reservation-preference": "none"},
        "trainer-capacity-reservation-preference",
        "applies only to nodes without a target",
    ),
    "preference-with-spot": (
        {"trainer-market": "spot", "trainer-spot-max-price": 3, "trainer-capacity-reservation-preference": "open"},
        "trainer-capacity-reservation-preference",
        "spot nodes never use reservations",
    ),
    "gp3-throughput-over-iops": (
        {"trainer-scratch-volume-gb": 500, "trainer-scratch-throughput-mibps": 1000},
        "trainer-scratch-throughput-mibps",
        "needs at least 4000 IOPS",
    ),
    "gp3-iops-over-size": (
        {"trainer-scratch-volume-gb": 10, "trainer-scratch-iops": 6000},
        "trainer-scratch-iops",
        "500 IOPS per GB",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_capacity_config_names_the_key_and_the_fix(case):
    overrides, key, fragment = BAD[case]
    with pytest.raises(ConfigError) as raised:
        # a zone is set: a targeted reservation needs one (its own case unsets it)
        parse_config({"aws:region": "us-east-1", "training-availability-zone": "us-east-1a", **overrides})
    assert f"config `stratus:{key}`" in str(raised.value) and fragment in str(raised.value), str(raised.value)
    assert "Fix:" in str(raised.value)


def test_quota_check_fails_at_preview_naming_quota_need_and_value():
    mocks = StratusMocks(quotas={"L-417A185B": 384})
    with pytest.raises(QuotaError) as raised:
        run_program(load_stack_config(BLOCK), mocks=mocks)
    message = str(raised.value)
    assert "config `stratus:trainer-count`" in message
    assert "needs 768 vCPUs (4 x p5.48xlarge)" in message and "'Running On-Demand P instances'" in message
    assert "ec2/L-417A185B" in message and "its value in us-east-1 is 384" in message
    # nothing was planned before the check failed
    assert not [r for r in mocks.invokes if r[0].endswith("getAmi")]
    enough = StratusMocks(quotas={"L-417A185B": 768})
    run_program(load_stack_config(BLOCK), mocks=enough)
    codes = [a["quotaCode"] for t, a in enough.invokes if t.endswith("getServiceQuota")]
    assert codes == ["L-1216C47A", "L-417A185B"]


def test_quota_needs_add_up_per_family_and_spot_uses_the_spot_quota():
    cfg = parse_config(
        {
            "aws:region": "us-east-1",
            "trainer-instance-type": "g5.12xlarge",
            "trainer-count": 3,
            "serving-instance-type": "g5.xlarge",
            "serving-root-volume-gb": 100,
            "trainer-market": "spot",
            "trainer-spot-max-price": 3,
        }
    )
    needs = {n.code: n for n in quota_needs(cfg)}
    # Spot training: 3 nodes + 1 that capacity rebalancing starts before the node it replaces ends.
    assert needs["L-3819A6DF"].vcpus == 4 * 48 and needs["L-3819A6DF"].usage == ("(3 + 1 rebalancing) x g5.12xlarge",)
    # Serving: 2 hosts (serving-count) x 2 during an instance refresh x 4 vCPUs of g5.xlarge.
    assert needs["L-DB2E81BA"].vcpus == 16
    check_quota(needs["L-DB2E81BA"], 16, "us-east-1")
    with pytest.raises(QuotaError, match="serving-instance-type"):
        check_quota(needs["L-DB2E81BA"], 15, "us-east-1")
    scaled = parse_config(
        {"aws:region": "us-east-1", "serving-count": 1, "serving-max-count": 3, "serving-scale-cpu-percent": 60}
    )
    assert {n.code: n for n in quota_needs(scaled)}["L-1216C47A"].usage[-1] == "6 x c7i.xlarge"
    off = StratusMocks(quotas={"L-DB2E81BA": 0})
    run_program(example_config(**{"quota-check": False}), mocks=off)
    assert not [t for t, _ in off.invokes if t.endswith("getServiceQuota")]


def _lt_inputs(run):
    lt = run.named("training-launch-template")
    return {k: v for k, v in lt.inputs.items() if k != "userData"}


def test_a_pinned_ami_keeps_the_plan_when_aws_publishes_a_newer_image():
    pinned = example_config(**{"trainer-ami": "ami-0123456789abcdef0", "serving-ami": "ami-0fedcba9876543210"})
    old, new = (run_program(pinned, mocks=StratusMocks(ami_generation=g)) for g in (1, 2))
    assert _lt_inputs(old) == _lt_inputs(new) and _lt_inputs(old)["imageId"] == "ami-0123456789abcdef0"
    serving = "serving-launch-template"
    assert old.named(serving).inputs["imageId"] == new.named(serving).inputs["imageId"] == "ami-0fedcba9876543210"
    assert "imageId" not in old.named(serving).ignore_changes  # a pinned AMI's change rolls the hosts
    # unpinned, the templates follow the family's newest image but running nodes and hosts keep
    # theirs: the node group has no instance refresh, so only replacements boot the new version
    old, new = (run_program(example_config(), mocks=StratusMocks(ami_generation=g)) for g in (1, 2))
    assert _lt_inputs(old)["imageId"] != _lt_inputs(new)["imageId"]
    assert "instanceRefresh" not in new.named("training-nodes").inputs
    # and a replacement node boots the image the others run, not AWS's newer one
    assert "imageId" in new.named("training-launch-template").ignore_changes
    assert "imageId" not in run_program(pinned).named("training-launch-template").ignore_changes
    assert (
        old.named("serving-launch-template").inputs["imageId"] != new.named("serving-launch-template").inputs["imageId"]
    )
    assert "imageId" in new.named("serving-launch-template").ignore_changes  # the hosts do not roll for it
    following = run_program(example_config(**{"trainer-follow-launch-template": True}))
    assert following.named("training-nodes").inputs["instanceRefresh"]["strategy"] == "Rolling"


def test_names_are_unique_per_organization_project_and_stack(example_run):
    alias = example_run.named("storage-key-alias").inputs["name"]
    assert alias == "alias/organization/stratus/dev"
    other = run_program(example_config(), stack="prod")
    assert other.named("storage-key-alias").inputs["name"] == "alias/organization/stratus/prod"
    assert other.outputs["serving_token_parameter"] == "/organization/stratus/prod/serving-token"
    assert example_run.outputs["serving_token_parameter"] != other.outputs["serving_token_parameter"]
