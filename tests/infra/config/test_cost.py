"""The cost estimator on hand-computed cases and the budget guard."""

from __future__ import annotations

from decimal import Decimal

import pytest

from infra.config.catalog import REGION_PRICES
from infra.config.cost import enforce_budget, estimate_cost
from infra.config.errors import BudgetExceededError, ConfigError
from infra.config.stack import parse_config


def _lines(estimate) -> dict[str, Decimal]:
    return {line.item: line.usd_per_hour for line in estimate.lines}


def test_two_nodes_for_ten_hours_plus_serving_host_and_nat():
    cfg = parse_config(
        {
            "aws:region": "us-east-1",
            "trainer-instance-type": "g5.12xlarge",
            "trainer-count": 2,
            "trainer-scratch-volume-gb": 500,
            "egress-enabled": True,
            "training-hours": 10,
        }
    )
    estimate = estimate_cost(cfg)
    # By hand, us-east-1: 2 x 5.672 = 11.344; 2 serving hosts x c7i.xlarge 0.1785 = 0.357;
    # NLB 0.0225; NAT 0.045 + its IPv4 0.005; 3 endpoints (ssm, ssmmessages, ec2messages) x 2 AZ
    # x 0.01 = 0.06; gp3 0.08/730 per GB-h: 2 x (200+500) GB -> 0.15342 ~ 0.1534, 2 x 50 GB ->
    # 0.01096 ~ 0.0110; S3 100 GB x 0.023/730 -> 0.00315 ~ 0.0032; KMS 1/730 ~ 0.0014.
    assert _lines(estimate) == {
        "training node g5.12xlarge (on-demand)": Decimal("11.3440"),
        "serving host c7i.xlarge": Decimal("0.3570"),
        "EBS gp3 GB, training nodes": Decimal("0.1534"),
        "EBS gp3 GB, serving hosts": Decimal("0.0110"),
        "network load balancer (internal)": Decimal("0.0225"),
        "S3 Standard GB (estimated-s3-gb)": Decimal("0.0032"),
        "interface endpoint x AZ": Decimal("0.0600"),
        "KMS customer-managed key": Decimal("0.0014"),
        "NAT gateway": Decimal("0.0450"),
        "public IPv4 (NAT Elastic IP)": Decimal("0.0050"),
    }
    assert estimate.total_usd_per_hour == Decimal("12.0025")
    assert estimate.run_usd == Decimal("120.03")


def test_spot_nodes_are_priced_at_their_cap_in_the_chosen_region():
    cfg = parse_config(
        {
            "aws:region": "eu-west-1",
            "trainer-instance-type": "p4d.24xlarge",
            "trainer-count": 4,
            "trainer-market": "spot",
            "trainer-spot-max-price": 12,
            "trainer-root-volume-gb": 100,
            "trainer-scratch-volume-gb": 0,
            "serving-instance-type": "g5.xlarge",
            "serving-root-volume-gb": 100,
            "availability-zone-count": 3,
            "interface-endpoints": ["ssm", "ssmmessages", "ec2messages"],
            "estimated-s3-gb": 0,
        }
    )
    estimate = estimate_cost(cfg)
    # 4 x 12 = 48; 2 x g5.xlarge eu-west-1 1.123 = 2.246; NLB 0.0252; 3 x 3 x 0.011 = 0.099;
    # gp3 0.088/730: 400 GB -> 0.04822 ~ 0.0482, 2 x 100 GB -> 0.02411 ~ 0.0241; S3 0; KMS 0.0014; no NAT.
    assert _lines(estimate)["training node p4d.24xlarge (spot cap)"] == Decimal("48.0000")
    assert estimate.total_usd_per_hour == Decimal("50.4439")
    assert estimate.run_usd is None


@pytest.mark.parametrize("region", sorted(REGION_PRICES))
def test_total_is_exactly_the_sum_of_the_printed_lines(region):
    cfg = parse_config({"aws:region": region, "egress-enabled": True, "trainer-count": 7})
    estimate = estimate_cost(cfg)
    printed = [line.split()[-1] for line in estimate.table().splitlines()[1 : 1 + len(estimate.lines)]]
    assert sum(Decimal(p) for p in printed) == estimate.total_usd_per_hour


def test_budget_guard_raises_above_the_cap_and_passes_at_or_below_it():
    estimate = estimate_cost(parse_config({"aws:region": "us-east-1", "trainer-scratch-volume-gb": 500}))
    enforce_budget(estimate, None)
    enforce_budget(estimate, float(estimate.total_usd_per_hour))
    with pytest.raises(BudgetExceededError, match=r"(?s)max-hourly-usd.*Breakdown:.*total\s+11\.9525"):
        enforce_budget(estimate, 11.95)


P5_US_EAST_2 = {
    "aws:region": "us-east-2",
    "trainer-instance-type": "p5.48xlarge",
    "trainer-count": 4,
    "training-hours": 10,
}


def test_a_region_the_catalog_does_not_price_marks_each_unpriced_line_and_names_its_key():
    estimate = estimate_cost(parse_config(P5_US_EAST_2))
    assert not estimate.complete
    # us-east-2 sells p5 and c7i.xlarge but the catalog prices neither there, nor its storage/network
    assert set(_lines(estimate).values()) == {None} and estimate.total_usd_per_hour == 0
    table = estimate.table()
    assert "p5.48xlarge in us-east-2: set `trainer-on-demand-usd-per-hour`" in table
    assert "c7i.xlarge in us-east-2: set `serving-on-demand-usd-per-hour`" in table
    assert "add its `REGION_PRICES` row" in table and "python -m infra.tools.prices us-east-2" in table
    assert "unknown" in table and "INCOMPLETE" in table and "at least 0.00 USD" in table
    block = estimate_cost(
        parse_config(
            {
                **P5_US_EAST_2,
                "trainer-market": "capacity-block",
                "trainer-capacity-reservation-id": "cr-0123456789abcdef0",
                "training-availability-zone": "us-east-2a",
            }
        )
    )
    assert "set `trainer-capacity-block-usd-per-hour` (or `trainer-on-demand-usd-per-hour`)" in block.table()


def test_price_keys_price_the_instances_where_the_catalog_cannot_and_override_it_where_it_can():
    keyed = {**P5_US_EAST_2, "trainer-on-demand-usd-per-hour": 55.04, "serving-on-demand-usd-per-hour": 0.1785}
    estimate = estimate_cost(parse_config(keyed))
    lines = _lines(estimate)
    assert lines["training node p5.48xlarge (on-demand, configured price)"] == Decimal("220.1600")
    assert lines["serving host c7i.xlarge (configured price)"] == Decimal("0.3570")  # 2 hosts
    assert estimate.total_usd_per_hour == Decimal("220.5170") and estimate.run_usd == Decimal("2205.17")
    assert len(estimate.missing) == 1 and "REGION_PRICES" in estimate.missing[0]  # storage/network still unknown
    # where the catalog has a price, the key wins (a negotiated rate)
    discounted = estimate_cost(parse_config({"aws:region": "us-east-1", "trainer-on-demand-usd-per-hour": 4}))
    assert _lines(discounted)["training node g5.12xlarge (on-demand, configured price)"] == Decimal("8.0000")
    assert discounted.complete


def test_budget_guard_refuses_an_incomplete_estimate_under_the_cap_and_fails_one_already_above_it():
    keyed = {**P5_US_EAST_2, "trainer-on-demand-usd-per-hour": 55.04, "serving-on-demand-usd-per-hour": 0.1785}
    estimate = estimate_cost(parse_config(keyed))
    enforce_budget(estimate, None)
    with pytest.raises(BudgetExceededError, match=r"its priced lines alone\) 220\.5170 USD/h is above the cap"):
        enforce_budget(estimate, 200)
    with pytest.raises(ConfigError) as raised:
        enforce_budget(estimate, 300)
    assert raised.type is ConfigError
    message = str(raised.value)
    assert "config `stratus:max-hourly-usd`: cannot be checked" in message and "REGION_PRICES" in message
    assert "unset `max-hourly-usd`" in message


def test_serving_hosts_are_priced_at_the_groups_ceiling():
    scaled = parse_config(
        {"aws:region": "us-east-1", "serving-count": 2, "serving-max-count": 5, "serving-scale-cpu-percent": 60}
    )
    lines = {line.item: line for line in estimate_cost(scaled).lines}
    # CPU scaling may run 5 hosts: 5 x 0.1785 = 0.8925; 5 x 50 GB x 0.08/730 = 0.0274.
    assert lines["serving host c7i.xlarge"].quantity == 5
    assert lines["serving host c7i.xlarge"].usd_per_hour == Decimal("0.8925")
    assert lines["EBS gp3 GB, serving hosts"].usd_per_hour == Decimal("0.0274")
