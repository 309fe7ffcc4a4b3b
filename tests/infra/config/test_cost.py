"""The cost estimator on hand-computed cases and the budget guard."""

from __future__ import annotations

from decimal import Decimal

import pytest

from infra.config.catalog import REGIONS
from infra.config.cost import enforce_budget, estimate_cost
from infra.config.errors import BudgetExceededError
from infra.config.stack import parse_config


def _lines(estimate) -> dict[str, Decimal]:
    return {line.item: line.usd_per_hour for line in estimate.lines}


def test_two_nodes_for_ten_hours_plus_serving_host_and_nat():
    cfg = parse_config({"aws:region": "us-east-1", "trainer-instance-type": "g5.12xlarge", "trainer-count": 2,
                        "trainer-scratch-volume-gb": 500, "egress-enabled": True, "training-hours": 10})  # fmt: skip
    estimate = estimate_cost(cfg)
    # By hand, us-east-1: 2 x 5.672 = 11.344; c7i.xlarge 0.1785; NAT 0.045 + its IPv4 0.005;
    # 3 endpoints (ssm, ssmmessages, ec2messages) x 2 AZ x 0.01 = 0.06;
    # gp3 0.08/730 per GB-h: 2 x (200+500) GB -> 0.15342 ~ 0.1534, 50 GB -> 0.00548 ~ 0.0055;
    # S3 100 GB x 0.023/730 -> 0.00315 ~ 0.0032; KMS 1/730 ~ 0.0014.
    assert _lines(estimate) == {
        "training node g5.12xlarge (on-demand)": Decimal("11.3440"),
        "serving host c7i.xlarge": Decimal("0.1785"),
        "EBS gp3 GB, training nodes": Decimal("0.1534"),
        "EBS gp3 GB, serving host": Decimal("0.0055"),
        "S3 Standard GB (estimated-s3-gb)": Decimal("0.0032"),
        "interface endpoint x AZ": Decimal("0.0600"),
        "KMS customer-managed key": Decimal("0.0014"),
        "NAT gateway": Decimal("0.0450"),
        "public IPv4 (NAT Elastic IP)": Decimal("0.0050"),
    }
    assert estimate.total_usd_per_hour == Decimal("11.7960")
    assert estimate.run_usd == Decimal("117.96")


def test_spot_nodes_are_priced_at_their_cap_in_the_chosen_region():
    cfg = parse_config({
        "aws:region": "eu-west-1", "trainer-instance-type": "p4d.24xlarge", "trainer-count": 4,
        "trainer-market": "spot", "trainer-spot-max-price": 12, "trainer-root-volume-gb": 100,
        "trainer-scratch-volume-gb": 0, "serving-instance-type": "g5.xlarge", "serving-root-volume-gb": 100,
        "availability-zone-count": 3, "interface-endpoints": ["ssm", "ssmmessages", "ec2messages"],
        "estimated-s3-gb": 0,
    })  # fmt: skip
    estimate = estimate_cost(cfg)
    # 4 x 12 = 48; g5.xlarge eu-west-1 1.123; 3 x 3 x 0.011 = 0.099; gp3 0.088/730:
    # 400 GB -> 0.04822 ~ 0.0482, 100 GB -> 0.01205 ~ 0.0121; S3 0; KMS 0.0014; no NAT.
    assert _lines(estimate)["training node p4d.24xlarge (spot cap)"] == Decimal("48.0000")
    assert estimate.total_usd_per_hour == Decimal("49.2837")
    assert estimate.run_usd is None


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_total_is_exactly_the_sum_of_the_printed_lines(region):
    cfg = parse_config({"aws:region": region, "egress-enabled": True, "trainer-count": 7})
    estimate = estimate_cost(cfg)
    printed = [line.split()[-1] for line in estimate.table().splitlines()[1 : 1 + len(estimate.lines)]]
    assert sum(Decimal(p) for p in printed) == estimate.total_usd_per_hour


def test_budget_guard_raises_above_the_cap_and_passes_at_or_below_it():
    estimate = estimate_cost(parse_config({"aws:region": "us-east-1", "trainer-scratch-volume-gb": 500}))
    enforce_budget(estimate, None)
    enforce_budget(estimate, float(estimate.total_usd_per_hour))
    with pytest.raises(BudgetExceededError, match=r"(?s)max-hourly-usd.*Breakdown:.*total\s+11\.7460"):
        enforce_budget(estimate, 11.74)
