"""Training on its own under mocks: EFA interfaces, spot, placement group, encrypted volumes."""

from __future__ import annotations

from infra.components.training import Training, TrainingArgs
from infra.config.catalog import CATALOG
from infra.tools.offline import StratusMocks, run
from tests.infra import checks
from tests.infra.components.support import KEY, TAGS


def training_run(instance_type: str, mocks=None, **overrides):
    args = dict(
        instance_type=CATALOG[instance_type],
        num_nodes=3,
        subnet_id="subnet-1",
        security_group_id="sg-1",
        instance_profile_arn="arn:aws:iam::1:instance-profile/t",
        instance_profile_name="t",
        key_arn=KEY,
        user_data="#!/bin/bash\n",
        region="us-east-1",
        tags=TAGS,
    )
    return run(lambda: {"t": Training("training", TrainingArgs(**{**args, **overrides}))}, mocks=mocks)


def test_training_nodes_get_efa_on_every_efa_card_and_spot_when_capped():
    mocks = StratusMocks()
    result = training_run("p4d.24xlarge", mocks=mocks, market="spot", spot_max_price=12.5)
    (lt,) = result.of_type(checks.LT)
    interfaces = lt.inputs["networkInterfaces"]
    assert [(i["networkCardIndex"], i["deviceIndex"], i["interfaceType"]) for i in interfaces] == [
        (0, 0, "efa"),
        (1, 1, "efa"),
        (2, 1, "efa"),
        (3, 1, "efa"),
    ]
    assert lt.inputs["instanceMarketOptions"]["spotOptions"]["maxPrice"] == "12.5"
    (group,) = result.of_type("aws:ec2/placementGroup:PlacementGroup")
    assert group.inputs["strategy"] == "cluster" and lt.inputs["placement"]["groupName"] == group.state["name"]
    assert len(result.of_type(checks.INSTANCE)) == 3
    (ami_call,) = [a for t, a in mocks.invokes if t == "aws:ec2/getAmi:getAmi"]
    assert "Deep Learning" in ami_call["filters"][0]["values"][0] and ami_call["owners"] == ["amazon"]
    assert checks.volume_encryption(result, keys={KEY}) == []
    for check in (checks.imdsv2, checks.no_public_ips, checks.tags_present):
        assert check(result) == [], check.__name__


def test_training_without_efa_uses_one_plain_interface_and_on_demand():
    result = training_run("g5.12xlarge", scratch_volume_gb=0, ami_id="ami-0123456789abcdef0")
    (lt,) = result.of_type(checks.LT)
    assert [i.get("interfaceType") for i in lt.inputs["networkInterfaces"]] == [None]
    assert "instanceMarketOptions" not in lt.inputs
    assert lt.inputs["imageId"] == "ami-0123456789abcdef0"
    assert [m["deviceName"] for m in lt.inputs["blockDeviceMappings"]] == ["/dev/xvda"]
