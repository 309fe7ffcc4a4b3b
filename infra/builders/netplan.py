"""Network planning: subnet CIDR maths and the choice of availability zones.

Pure functions. `infra.components.network.lookup_zones` asks AWS (through Pulumi invokes) which
zones exist and which offer the instance types, then calls `choose_zones`.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from infra.config.errors import ConfigError

# The VPC is cut into eighths: private subnets take the first four, public ones the next
# four, so up to four zones fit and private subnets keep most of the address space.
SUBNET_SPLIT_BITS = 3
MAX_ZONES = 4


@dataclass(frozen=True)
class SubnetPlan:
    """CIDRs of one zone's subnets."""

    zone: str
    private_cidr: str
    public_cidr: str


def plan_subnets(vpc_cidr: str, zones: Sequence[str]) -> list[SubnetPlan]:
    """Split `vpc_cidr` into one private and one public subnet per zone, without overlaps.

    Args:
        vpc_cidr: the VPC range, IPv4, prefix /16 to /24.
        zones: zone names, at most four.

    Returns:
        One `SubnetPlan` per zone, in the order given.
    """
    if not 1 <= len(zones) <= MAX_ZONES:
        raise ValueError(f"need 1-{MAX_ZONES} zones, got {len(zones)}")
    vpc = ipaddress.ip_network(vpc_cidr, strict=True)
    blocks = list(vpc.subnets(prefixlen_diff=SUBNET_SPLIT_BITS))
    return [SubnetPlan(zone, str(blocks[i]), str(blocks[MAX_ZONES + i])) for i, zone in enumerate(zones)]


AWS_RESERVED_PER_SUBNET = 5
"""Addresses AWS keeps in every subnet: network, VPC router, DNS, future use, broadcast."""
REPLACEMENT_FRACTION = 0.1
"""Capacity rebalancing may run the group 10% over its size (at least one instance) while
replacements start before the instances they replace are gone (Auto Scaling user guide)."""
MIN_VPC_PREFIX = 16


def replacement_nodes(nodes: int) -> int:
    """Instances a group of `nodes` may run beyond its size while replacements start first
    (`REPLACEMENT_FRACTION`, at least one)."""
    return max(1, math.ceil(nodes * REPLACEMENT_FRACTION))


@dataclass(frozen=True)
class AddressBudget:
    """Addresses of the training subnet: what it holds and what the stack puts in it."""

    subnet_cidr: str
    usable: int
    """The subnet's size minus `AWS_RESERVED_PER_SUBNET`."""
    needs: tuple[tuple[str, int], ...]
    """(what, addresses) of each consumer."""

    @property
    def total(self) -> int:
        """Addresses needed."""
        return sum(n for _, n in self.needs)

    @property
    def shortfall(self) -> int:
        """Addresses missing (0 when the subnet is big enough)."""
        return max(0, self.total - self.usable)

    def describe(self) -> str:
        """`<subnet>: N usable, M needed (a + b + ...)`."""
        parts = " + ".join(f"{n} {what}" for what, n in self.needs)
        return (
            f"training subnet {self.subnet_cidr}: {self.usable} usable addresses (its "
            f"{self.usable + AWS_RESERVED_PER_SUBNET} minus the {AWS_RESERVED_PER_SUBNET} AWS reserves), "
            f"{self.total} needed ({parts})"
        )


def training_subnet_budget(
    vpc_cidr: str,
    *,
    nodes: int,
    ip_interfaces_per_node: int,
    interface_endpoints: int,
    serving_hosts: int,
    zones: int,
) -> AddressBudget:
    """The address budget of the training subnet (the first private subnet of `plan_subnets`).

    Args:
        vpc_cidr: the VPC range.
        nodes: `trainer-count`.
        ip_interfaces_per_node: interfaces of a node that carry an IP (`InstanceType.ip_interfaces`).
        interface_endpoints: interface VPC endpoints (one interface in every private subnet each).
        serving_hosts: the most serving hosts in service (`serving-max-count`, else `serving-count`);
            a rolling refresh doubles them, spread over `zones` subnets.
        zones: private subnets the serving group and the load balancer span.
    """
    subnet = next(ipaddress.ip_network(vpc_cidr, strict=True).subnets(prefixlen_diff=SUBNET_SPLIT_BITS))
    spare = replacement_nodes(nodes)
    needs = (
        (
            f"for the training nodes ({nodes} + {spare} replacing, {ip_interfaces_per_node} "
            + ("IP interface each)" if ip_interfaces_per_node == 1 else "IP interfaces each)"),
            (nodes + spare) * ip_interfaces_per_node,
        ),
        (f"for {interface_endpoints} interface endpoints", interface_endpoints),
        ("for the load balancer", 1),
        (
            f"for serving hosts (up to {2 * serving_hosts} during a refresh, over {zones} zones)",
            math.ceil(2 * serving_hosts / zones),
        ),
    )
    return AddressBudget(str(subnet), subnet.num_addresses - AWS_RESERVED_PER_SUBNET, needs)


def smallest_vpc_prefix(total: int) -> int | None:
    """The longest VPC prefix (smallest VPC, /16 at most) whose training subnet holds `total`
    addresses; None when even a /16 does not."""
    for prefix in range(24, MIN_VPC_PREFIX - 1, -1):
        if 2 ** (32 - prefix - SUBNET_SPLIT_BITS) - AWS_RESERVED_PER_SUBNET >= total:
            return prefix
    return None


@dataclass(frozen=True)
class ZonePlan:
    """The zones of the VPC; `training_zone` is first and also hosts the serving host."""

    zones: tuple[str, ...]
    training_zone: str


def choose_zones(
    available: Sequence[str],
    count: int,
    *,
    requested: str | None,
    offering: Mapping[str, Sequence[str]] | None = None,
    type_keys: Mapping[str, str] | None = None,
) -> ZonePlan:
    """Pick `count` zones with one that offers every instance type for training and serving.

    Args:
        available: zone names that are up in the region, in AWS order.
        count: how many zones the VPC spans.
        requested: `training-availability-zone`, or None to pick the first that fits.
        offering: instance type -> zones offering it; None skips the offering check.
        type_keys: instance type -> the config key that chose it (`serving-instance-type`...),
            named when no zone offers the type; a type not in it is blamed on
            `trainer-instance-type`, the key that decides the training zone.

    Returns:
        The plan; its zones start with the training zone.

    Raises:
        ConfigError: too few zones, the requested zone is unknown, or no zone offers a type.
    """
    if len(available) < count:
        raise ConfigError(
            "availability-zone-count",
            f"{count} zones requested but the region has {len(available)} available",
            f"set it to at most {len(available)}",
        )
    candidates = list(available)
    if offering:
        for instance_type, zones in offering.items():
            fits = [z for z in candidates if z in set(zones)]
            if not fits:
                blamed = (type_keys or {}).get(instance_type, "trainer-instance-type")
                # A requested zone is to blame only when the type is offered somewhere else.
                key = "training-availability-zone" if requested and zones else blamed
                raise ConfigError(
                    key,
                    f"no zone offers {instance_type} together with the other instance types; "
                    f"zones offering {instance_type}: {', '.join(sorted(zones)) or 'none'}",
                    "choose instance types offered in a common zone, or another region",
                )
            candidates = fits
    if requested is not None:
        if requested not in available:
            raise ConfigError(
                "training-availability-zone",
                f"{requested} is not an available zone",
                "use one of " + ", ".join(available),
            )
        if requested not in candidates:
            raise ConfigError(
                "training-availability-zone",
                f"{requested} does not offer every instance type of the stack",
                "use one of " + ", ".join(candidates),
            )
        training = requested
    else:
        training = candidates[0]
    others = [z for z in available if z != training][: count - 1]
    return ZonePlan((training, *others), training)
