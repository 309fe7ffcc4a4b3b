"""Validation rules of the stack config: each raises `ConfigError` naming the key and the fix.

Plain functions of values, one per concern, so they import neither `StackConfig` nor Pulumi:
`StackConfig.__post_init__` (infra/config/stack.py) calls them on every construction. Checks of
independent keys run through `errors.collect`, so a config with several bad keys reports all of
them at once (`ConfigErrors`); a check that needs another key to be valid first runs after it.
"""

from __future__ import annotations

import ipaddress
import re

from infra.builders.netplan import AddressBudget, smallest_vpc_prefix, training_subnet_budget
from infra.config.catalog import AMI_FAMILIES, CATALOG, REGIONS, InstanceType
from infra.config.errors import ConfigError, collect
from runtime.contract import MODEL_NAME_RE, model_name_problem

INTERFACE_SERVICES = frozenset({"ssm", "ssmmessages", "ec2messages", "kms", "logs", "sts", "ecr.api", "ecr.dkr"})
"""Services `interface-endpoints` may name."""
SSM_SERVICES = ("ssm", "ssmmessages", "ec2messages")
"""Endpoints Session Manager needs when instances have no internet egress."""
MARKETS = ("on-demand", "spot", "capacity-block")
AMI_ID = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
ZONE_NAME = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
MIN_GPU_ROOT_GB = 100  # Deep Learning AMI root snapshot plus the runtime venv and caches.
MIN_CPU_ROOT_GB = 20
MAX_VOLUME_GB = 16384  # the gp3 size limit
MAX_SERVING_HOSTS = 20


def _in_range(key: str, value: float, low: float, high: float, unit: str = "") -> None:
    if not low <= value <= high:
        raise ConfigError(key, f"{value}{unit} is out of range", f"use {low}-{high}{unit}")


def _positive_or_unset(key: str, value: float | None, fix: str) -> None:
    if value is not None and value <= 0:
        raise ConfigError(key, f"{value} is not positive", fix)


def _cidr(key: str, text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ConfigError(
            key,
            f"{text!r} is not a valid CIDR ({e})",
            "write a network address with its prefix, e.g. 10.42.0.0/16",
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ConfigError(key, f"{text} is an IPv6 range", "use an IPv4 range")
    return net


def _ami(key: str, ami: str | None) -> None:
    if ami is not None and not AMI_ID.match(ami):
        raise ConfigError(key, f"{ami!r} is not an AMI id", "use an id like ami-0123456789abcdef0, or unset it")


def instance_type(key: str, name: str, region: str, *, gpu_only: bool) -> InstanceType:
    """The catalog entry of `name`, which must be offered in `region` (and have GPUs if `gpu_only`).

    Raises:
        ConfigError: naming `key`, the allowed types, or the regions that offer the type.
    """
    entry = CATALOG.get(name)
    allowed = [t.name for t in CATALOG.values() if t.gpus > 0 or not gpu_only]
    if entry is None or (gpu_only and entry.gpus == 0):
        kind = "GPU instance type" if gpu_only else "instance type"
        raise ConfigError(
            key,
            f"{name!r} is not a supported {kind}",
            "use one of " + ", ".join(allowed) + " (catalog: infra/config/catalog.py)",
        )
    if region not in entry.regions:
        raise ConfigError(
            key,
            f"{name} is not recorded as sold in {region}; regions that offer it: " + ", ".join(entry.regions),
            f"set `aws:region` to one of those regions or choose a type offered in {region} (if AWS sells "
            f"{name} there now, `aws ec2 describe-instance-type-offerings --region {region}` shows it: add the "
            "region to the type's `sold` list in infra/config/catalog.py)",
        )
    return entry


def check_region(region: str) -> None:
    """`aws:region` is one where the catalog records a GPU type as sold."""
    if region not in REGIONS:
        raise ConfigError(
            "aws:region",
            f"{region!r} is not a supported region (none of the catalog's GPU types is recorded as sold there)",
            "use one of " + ", ".join(REGIONS) + " (infra/config/catalog.py, SOLD_IN_SOURCE)",
        )


def check_network(
    *,
    region: str,
    vpc_cidr: str,
    num_availability_zones: int,
    training_availability_zone: str | None,
    interface_endpoints: tuple[str, ...],
    egress_enabled: bool,
) -> None:
    """The VPC range, zone count and zone name, and the interface endpoints (SSM without egress)."""
    collect(
        lambda: _vpc_range(vpc_cidr),
        lambda: _in_range("availability-zone-count", num_availability_zones, 2, 4),
        lambda: _zone(region, training_availability_zone),
        lambda: _endpoints(interface_endpoints, egress_enabled),
    )


def _vpc_range(vpc_cidr: str) -> None:
    vpc = _cidr("vpc-cidr", vpc_cidr)
    if not vpc.is_private or not 16 <= vpc.prefixlen <= 24:
        raise ConfigError(
            "vpc-cidr",
            f"{vpc_cidr} must be a private range of /16 to /24",
            "use e.g. 10.42.0.0/16 (RFC 1918)",
        )


def _zone(region: str, zone: str | None) -> None:
    if zone is not None and (not ZONE_NAME.match(zone) or not zone.startswith(region)):
        raise ConfigError(
            "training-availability-zone",
            f"{zone!r} is not a zone of {region}",
            f"use a zone name like {region}a, or unset it",
        )


def _endpoints(interface_endpoints: tuple[str, ...], egress_enabled: bool) -> None:
    unknown = sorted(set(interface_endpoints) - INTERFACE_SERVICES)
    if unknown or len(set(interface_endpoints)) != len(interface_endpoints):
        raise ConfigError(
            "interface-endpoints",
            f"unknown or repeated services {unknown}",
            "list each of " + ", ".join(sorted(INTERFACE_SERVICES)) + " at most once",
        )
    missing = [s for s in SSM_SERVICES if s not in interface_endpoints]
    if missing and not egress_enabled:
        raise ConfigError(
            "interface-endpoints",
            f"{missing} missing while egress is disabled, so Session Manager could not reach the instances",
            "add them, or set `egress-enabled: true`",
        )


def check_trainer(
    *,
    region: str,
    instance_type_name: str,
    num_trainers: int,
    market: str,
    spot_max_price: float | None,
    on_demand_usd_per_hour: float | None,
    ami: str | None,
    root_volume_gb: int,
    scratch_volume_gb: int,
    ami_framework: str | None = None,
) -> None:
    """The training nodes: a GPU type offered in the region, count, market and spot cap, AMI, volumes."""

    def market_and_price() -> None:
        trainer = instance_type("trainer-instance-type", instance_type_name, region, gpu_only=True)
        if market not in MARKETS:
            raise ConfigError(
                "trainer-market", f"{market!r} is not a market", "use `on-demand`, `spot` or `capacity-block`"
            )
        catalog_price = trainer.usd_per_hour.get(region)
        on_demand = on_demand_usd_per_hour or (float(catalog_price) if catalog_price is not None else None)
        _spot_cap(market, spot_max_price, on_demand)

    collect(
        market_and_price,
        lambda: _in_range("trainer-count", num_trainers, 1, 64),
        lambda: _positive_or_unset(
            "trainer-on-demand-usd-per-hour", on_demand_usd_per_hour, "set the on-demand USD per instance-hour"
        ),
        lambda: _ami("trainer-ami", ami),
        lambda: _ami_framework(ami_framework),
        lambda: _in_range("trainer-root-volume-gb", root_volume_gb, MIN_GPU_ROOT_GB, MAX_VOLUME_GB, " GB"),
        lambda: _in_range("trainer-scratch-volume-gb", scratch_volume_gb, 0, MAX_VOLUME_GB, " GB"),
    )


def _spot_cap(market: str, spot_max_price: float | None, on_demand: float | None) -> None:
    if market == "spot" and spot_max_price is None:
        raise ConfigError(
            "trainer-spot-max-price",
            "is required with `trainer-market: spot` so the budget guard has an upper bound",
            "set a cap in USD/h per node" + (f", at most the on-demand {on_demand}" if on_demand else ""),
        )
    if market != "spot" and spot_max_price is not None:
        raise ConfigError(
            "trainer-spot-max-price",
            f"is set but `trainer-market` is {market}",
            "remove it, or set `trainer-market: spot`",
        )
    if spot_max_price is not None and on_demand is None and spot_max_price <= 0:
        raise ConfigError("trainer-spot-max-price", f"{spot_max_price} is not positive", "set a positive cap")
    if spot_max_price is not None and on_demand is not None and not 0 < spot_max_price <= on_demand:
        raise ConfigError(
            "trainer-spot-max-price",
            f"{spot_max_price} is not within (0, on-demand price {on_demand}] USD/h",
            "set a positive cap no higher than on-demand",
        )


def _ami_framework(name: str | None) -> None:
    if name is not None and name not in AMI_FAMILIES:
        raise ConfigError(
            "trainer-ami-framework",
            f"{name!r} is not a Deep Learning AMI family of the catalog",
            "use one of " + ", ".join(AMI_FAMILIES) + " (infra/config/catalog.py AMI_FAMILIES)",
        )


def check_addresses(
    *,
    vpc_cidr: str,
    instance_type_name: str,
    num_trainers: int,
    interface_endpoints: tuple[str, ...],
    serving_hosts: int,
    zones: int,
) -> AddressBudget | None:
    """The training subnet holds every address the stack puts in it (EC2 would otherwise fail
    `pulumi up` with InsufficientFreeAddressesInSubnet). None when the inputs are themselves
    invalid (their own checks report them).

    Raises:
        ConfigError: on `vpc-cidr`, with the subnet's size, each consumer and the shortfall.
    """
    trainer = CATALOG.get(instance_type_name)
    try:
        vpc = ipaddress.ip_network(vpc_cidr, strict=True)
    except ValueError:
        return None
    if trainer is None or not isinstance(vpc, ipaddress.IPv4Network) or not 16 <= vpc.prefixlen <= 24 or zones < 1:
        return None
    budget = training_subnet_budget(
        vpc_cidr,
        nodes=num_trainers,
        ip_interfaces_per_node=trainer.ip_interfaces,
        interface_endpoints=len(interface_endpoints),
        serving_hosts=serving_hosts,
        zones=zones,
    )
    if budget.shortfall:
        prefix = smallest_vpc_prefix(budget.total)
        raise ConfigError(
            "vpc-cidr",
            f"{vpc_cidr} is too small: {budget.describe()}; short by {budget.shortfall} "
            + ("address" if budget.shortfall == 1 else "addresses")
            + " (`pulumi up` would fail with InsufficientFreeAddressesInSubnet)",
            (f"use a /{prefix} or larger range" if prefix else "no VPC of /16 or smaller holds it")
            + ", or lower `trainer-count`",
        )
    return budget


def check_serving(
    *,
    region: str,
    instance_type_name: str,
    ami: str | None,
    root_volume_gb: int,
    port: int,
    allowed_cidrs: tuple[str, ...],
    model_name: str,
    grpc_port: int = 0,
) -> None:
    """The serving host: type offered in the region, AMI, root volume, ports, allowed ranges, model name."""

    def type_and_root() -> None:
        server = instance_type("serving-instance-type", instance_type_name, region, gpu_only=False)
        min_root = MIN_GPU_ROOT_GB if server.gpus else MIN_CPU_ROOT_GB
        _in_range("serving-root-volume-gb", root_volume_gb, min_root, MAX_VOLUME_GB, " GB")

    collect(
        type_and_root,
        lambda: _ami("serving-ami", ami),
        lambda: _in_range("serving-port", port, 1024, 65535),
        lambda: _grpc_port(grpc_port, port),
        lambda: _allowed_cidrs(allowed_cidrs),
        lambda: _model_name(model_name),
    )


def _grpc_port(grpc_port: int, port: int) -> None:
    if grpc_port != 0 and not 1024 <= grpc_port <= 65535:
        raise ConfigError("serving-grpc-port", f"{grpc_port} is out of range", "use 1024-65535, or 0 to turn gRPC off")
    if grpc_port == port:
        # The server's health and metrics routes share the HTTP port: it is the only one to avoid.
        raise ConfigError(
            "serving-grpc-port",
            f"{grpc_port} is also `serving-port` (HTTP, with health and metrics)",
            "pick another port (e.g. 8001), or 0 to turn gRPC off",
        )


def _allowed_cidrs(allowed_cidrs: tuple[str, ...]) -> None:
    for text in allowed_cidrs:
        if _cidr("serving-allowed-cidrs", text).prefixlen < 8:
            raise ConfigError(
                "serving-allowed-cidrs",
                f"{text} would expose the inference port to a large part of the internet",
                "list the VPC range or your VPN/peered ranges (prefix /8 or longer)",
            )


def _model_name(model_name: str) -> None:
    # The rule is the runtime's too (`publish` and `serve` check it): one definition in the contract.
    problem = model_name_problem(model_name)
    if problem is not None:
        raise ConfigError("model-name", problem, f"pick a name matching {MODEL_NAME_RE.pattern}, e.g. mlp-binary")


def check_serving_group(
    *, count: int, max_count: int | None, scale_cpu_percent: float | None, drain_seconds: int
) -> None:
    """The serving Auto Scaling group: its size, the opt-in CPU scaling and the drain time."""

    def size() -> None:
        _in_range("serving-count", count, 1, MAX_SERVING_HOSTS)
        if max_count is not None:
            _in_range("serving-max-count", max_count, count, MAX_SERVING_HOSTS)
            if max_count > count and scale_cpu_percent is None:
                raise ConfigError(
                    "serving-max-count",
                    f"{max_count} is above `serving-count` ({count}) but nothing scales the group",
                    "set `serving-scale-cpu-percent` too, or unset `serving-max-count`",
                )

    collect(
        size,
        lambda: scale_cpu_percent is None or _in_range("serving-scale-cpu-percent", scale_cpu_percent, 10, 90, " %"),
        lambda: _in_range("serving-drain-seconds", drain_seconds, 0, 3600, " s"),
    )


def check_operations(
    *,
    kms_deletion_window_days: int,
    checkpoint_noncurrent_days: int,
    logs_expiration_days: int,
    estimated_s3_gb: int,
    max_hourly_usd: float | None,
    training_hours: float | None,
    serving_on_demand_usd_per_hour: float | None = None,
) -> None:
    """Retention windows, the storage estimate, the budget cap, the expected run length and the
    serving price override."""
    collect(
        lambda: _positive_or_unset(
            "serving-on-demand-usd-per-hour", serving_on_demand_usd_per_hour, "set the on-demand USD per hour"
        ),
        lambda: _in_range("kms-deletion-window-days", kms_deletion_window_days, 7, 30),
        lambda: _in_range("checkpoint-noncurrent-days", checkpoint_noncurrent_days, 1, 3650),
        lambda: _in_range("logs-expiration-days", logs_expiration_days, 1, 3650),
        lambda: _in_range("estimated-s3-gb", estimated_s3_gb, 0, 10_000_000),
        lambda: _positive_or_unset("max-hourly-usd", max_hourly_usd, "set a cap in USD/h, or unset it"),
        lambda: _positive_or_unset(
            "training-hours", training_hours, "set the expected run length in hours, or unset it"
        ),
    )
