"""Subnet maths and the choice of zones, as pure functions."""

from __future__ import annotations

import ipaddress

import pytest

from infra.builders import netplan
from infra.builders.netplan import ZonePlan
from infra.config.errors import ConfigError


def test_subnet_plan_has_no_overlaps_and_stays_in_the_vpc():
    for cidr in ("10.42.0.0/16", "192.168.0.0/24"):
        plans = netplan.plan_subnets(cidr, ["a", "b", "c", "d"])
        nets = [ipaddress.ip_network(c) for p in plans for c in (p.private_cidr, p.public_cidr)]
        vpc = ipaddress.ip_network(cidr)
        assert all(n.subnet_of(vpc) for n in nets)
        assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])


def test_zone_choice_prefers_a_zone_offering_every_type():
    zones = ["z-a", "z-b", "z-c"]
    plan = netplan.choose_zones(zones, 2, requested=None, offering={"p4d": ["z-c", "z-b"], "c7i": zones})
    assert plan == ZonePlan(("z-b", "z-a"), "z-b")
    with pytest.raises(ConfigError, match="zones offering p5: z-a"):
        netplan.choose_zones(zones, 2, requested=None, offering={"p4d": ["z-c"], "p5": ["z-a"]})
    with pytest.raises(ConfigError, match="training-availability-zone"):
        netplan.choose_zones(zones, 2, requested="z-a", offering={"p4d": ["z-c"]})
    with pytest.raises(ConfigError, match="availability-zone-count"):
        netplan.choose_zones(zones, 4, requested=None)


def test_zone_choice_blames_the_key_that_chose_the_type():
    zones = ["z-a", "z-b"]
    keys = {"p4d": "trainer-instance-type", "c7i": "serving-instance-type"}
    with pytest.raises(ConfigError, match="config `stratus:serving-instance-type`.*zones offering c7i: none"):
        netplan.choose_zones(zones, 2, requested=None, offering={"p4d": zones, "c7i": []}, type_keys=keys)
    with pytest.raises(ConfigError, match="config `stratus:trainer-instance-type`.*zones offering p4d: none"):
        netplan.choose_zones(zones, 2, requested=None, offering={"p4d": [], "c7i": zones}, type_keys=keys)
    # with a requested zone, a type offered in no zone at all is still its key's fault
    with pytest.raises(ConfigError, match="config `stratus:serving-instance-type`.*zones offering c7i: none"):
        netplan.choose_zones(zones, 2, requested="z-a", offering={"p4d": zones, "c7i": []}, type_keys=keys)
    with pytest.raises(ConfigError, match="config `stratus:training-availability-zone`"):
        netplan.choose_zones(zones, 2, requested="z-a", offering={"p4d": ["z-b"], "c7i": zones}, type_keys=keys)
