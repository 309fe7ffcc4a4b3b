"""The training subnet's address budget: EFA interfaces with IPs, endpoints, the load balancer,
serving hosts, and the 5 addresses AWS keeps in every subnet."""

from __future__ import annotations

import dataclasses

import pytest

from infra.builders.netplan import AWS_RESERVED_PER_SUBNET, smallest_vpc_prefix, training_subnet_budget
from infra.config.catalog import CATALOG
from infra.config.errors import ConfigError
from infra.config.stack import parse_config

P5_BLOCK_ON_A_SLASH_24 = {
    "aws:region": "us-east-1",
    "vpc-cidr": "10.42.0.0/24",
    "trainer-instance-type": "p5.48xlarge",
    "trainer-count": 4,
    "trainer-market": "capacity-block",
    "trainer-capacity-reservation-id": "cr-0a1b2c3d4e5f60718",
    "training-availability-zone": "us-east-1a",
}


def test_p5_takes_one_address_per_node_with_efa_only_and_32_without():
    assert CATALOG["p5.48xlarge"].ip_interfaces == 1  # card 0's efa interface
    assert CATALOG["p4d.24xlarge"].ip_interfaces == 1  # efa-only on cards 1-3 too
    assert dataclasses.replace(CATALOG["p4d.24xlarge"], efa_only=False).ip_interfaces == 4  # efa on every card
    assert CATALOG["g5.12xlarge"].ip_interfaces == 1  # one plain ENI
    efa_only = training_subnet_budget(
        "10.42.0.0/24", nodes=4, ip_interfaces_per_node=1, interface_endpoints=3, serving_hosts=2, zones=2
    )
    # /24 -> eighths -> the training subnet is a /27: 32 addresses, 27 usable
    assert (efa_only.subnet_cidr, efa_only.usable) == ("10.42.0.0/27", 32 - AWS_RESERVED_PER_SUBNET)
    assert [n for _, n in efa_only.needs] == [5, 3, 1, 2] and efa_only.total == 11 and efa_only.shortfall == 0
    every_card = training_subnet_budget(
        "10.42.0.0/24", nodes=4, ip_interfaces_per_node=32, interface_endpoints=3, serving_hosts=2, zones=2
    )
    assert every_card.total == 5 * 32 + 6 and every_card.shortfall == 166 - 27


def test_four_p5_on_a_capacity_block_fit_a_slash_24_with_efa_only_interfaces():
    cfg = parse_config(P5_BLOCK_ON_A_SLASH_24)
    budget = cfg.address_budget
    assert (budget.usable, budget.total) == (27, 11)
    assert "training subnet 10.42.0.0/27: 27 usable addresses (its 32 minus the 5 AWS reserves), 11 needed" in (
        budget.describe()
    )


@pytest.mark.parametrize(
    "overrides,needed,short,prefix",
    [
        ({"trainer-count": 20}, 28, 1, 23),  # 20 + 2 replacing p5 nodes, 1 IP each
        ({"trainer-count": 32}, 42, 15, 23),
        ({"trainer-instance-type": "p4d.24xlarge", "trainer-count": 24}, 33, 6, 23),  # 24 + 3 replacing
    ],
    ids=["p5x20", "p5x32", "p4dx24"],
)
def test_a_slash_24_too_small_for_the_nodes_fails_naming_the_shortfall_and_a_fix(overrides, needed, short, prefix):
    with pytest.raises(ConfigError) as raised:
        parse_config({**P5_BLOCK_ON_A_SLASH_24, **overrides})
    message = str(raised.value)
    assert message.startswith("config `stratus:vpc-cidr`: 10.42.0.0/24 is too small")
    assert f"27 usable addresses (its 32 minus the 5 AWS reserves), {needed} needed" in message
    assert f"short by {short} address" in message and "InsufficientFreeAddressesInSubnet" in message
    assert f"use a /{prefix} or larger range" in message


def test_smallest_vpc_prefix_gives_the_first_range_that_holds_the_need():
    assert smallest_vpc_prefix(27) == 24 and smallest_vpc_prefix(28) == 23
    assert smallest_vpc_prefix(8187) == 16 and smallest_vpc_prefix(8188) is None
