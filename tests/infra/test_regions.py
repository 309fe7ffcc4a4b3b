"""The stack in regions the catalog records as selling p4d/p5 but does not price: the whole
program under mocks (endpoints, AMI and zone look-ups, policies) and the offline plan."""

from __future__ import annotations

import pytest

from infra.config.errors import BudgetExceededError, ConfigError
from infra.tools import plan
from infra.tools.offline import StratusMocks, run_program
from infra.tools.policycheck import evaluate
from tests.infra.support import example_config

P5 = {"trainer-instance-type": "p5.48xlarge", "trainer-count": 2, "max-hourly-usd": None}
REGION_INVOKES = ("getAmi", "getParameter", "getInstanceTypeOfferings", "getAvailabilityZones", "getServiceQuota")


@pytest.mark.parametrize("region", ["us-east-2", "ap-northeast-1"])
def test_the_stack_builds_in_a_region_without_catalog_prices(region):
    mocks = StratusMocks(region=region, offerings={"p5.48xlarge": [f"{region}b", f"{region}c"]})
    run = run_program(example_config(**{"aws:region": region, **P5}), mocks=mocks)
    assert run.outputs["region"] == region
    assert run.outputs["estimated_hourly_usd"] is None  # no partial sum passed off as an estimate
    endpoints = sorted(e.inputs["serviceName"] for e in run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint"))
    assert endpoints == [f"com.amazonaws.{region}.{s}" for s in ("ec2messages", "s3", "ssm", "ssmmessages")]
    zones = sorted(s.inputs["availabilityZone"] for s in run.of_type("aws:ec2/subnet:Subnet"))
    assert zones == [f"{region}a", f"{region}b"]  # the training zone is the first offering p5
    (training_subnet,) = [
        s for s in run.of_type("aws:ec2/subnet:Subnet") if s.inputs["availabilityZone"] == f"{region}b"
    ]
    assert run.named("training-nodes").inputs["vpcZoneIdentifiers"] == [training_subnet.id]
    # every look-up that takes a region asked this one (AMIs, zones, offerings, quotas)
    regional = [(token, args) for token, args in mocks.invokes if token.split(":")[-1] in REGION_INVOKES]
    assert {token.split(":")[-1] for token, _ in regional} == set(REGION_INVOKES)
    assert {args.get("region") for _, args in regional} == {region}
    assert [v for violations in evaluate(run).values() for v in violations] == []


def test_budget_guard_in_an_unpriced_region_asks_for_the_prices_instead_of_passing():
    with pytest.raises(ConfigError) as raised:
        run_program(example_config(**{"aws:region": "us-east-2", **P5, "max-hourly-usd": 500}))
    assert raised.type is ConfigError
    assert "`trainer-on-demand-usd-per-hour`" in str(raised.value) and "cannot be checked" in str(raised.value)
    keyed = {"trainer-on-demand-usd-per-hour": 55.04, "serving-on-demand-usd-per-hour": 0.1785}
    with pytest.raises(BudgetExceededError, match="its priced lines alone"):
        run_program(example_config(**{"aws:region": "us-east-2", **P5, **keyed, "max-hourly-usd": 100}))


def test_offline_plan_prints_the_unpriced_lines_and_the_keys_to_set(tmp_path, capsys):
    stack = tmp_path / "Pulumi.east2.yaml"
    stack.write_text(
        "config:\n  aws:region: us-east-2\n  stratus:trainer-instance-type: p5.48xlarge\n"
        "  stratus:trainer-on-demand-usd-per-hour: 55.04\n"
    )
    assert plan.main([str(stack)]) == 0
    out = capsys.readouterr().out
    assert (
        "training node p5.48xlarge (on-demand, configured price)" in out and "110.0800" in out
    )  # 2 x 55.04, from the key
    assert "total of the priced lines (INCOMPLETE)" in out
    assert "no price: c7i.xlarge in us-east-2: set `serving-on-demand-usd-per-hour`" in out
    assert "EC2 zone offerings of c7i.xlarge, p5.48xlarge in us-east-2" in out
