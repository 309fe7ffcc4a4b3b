"""Validation of a `StackConfig`: every rule raises `ConfigError` naming the key and the fix.

Kept apart from `config.py` so the field list stays readable; `StackConfig.__post_init__` calls
`check` on every construction.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

from infra import pricing
from infra.errors import ConfigError

if TYPE_CHECKING:
    from infra.config import StackConfig

INTERFACE_SERVICES = frozenset({"ssm", "ssmmessages", "ec2messages", "kms", "logs", "sts", "ecr.api", "ecr.dkr"})
"""Services `interface-endpoints` may name."""
SSM_SERVICES = ("ssm", "ssmmessages", "ec2messages")
"""Endpoints Session Manager needs when instances have no internet egress."""
AMI_ID = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
ZONE_NAME = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
# The model name lands in a systemd unit and an S3 key: a conservative charset keeps both safe.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_GPU_ROOT_GB = 100  # Deep Learning AMI root snapshot plus the runtime venv and caches.
MIN_CPU_ROOT_GB = 20


def _in_range(key: str, value: float, low: float, high: float, unit: str = "") -> None:
    if not low <= value <= high:
        raise ConfigError(key, f"{value}{unit} is out of range", f"use {low}-{high}{unit}")


def _instance_type(key: str, name: str, region: str, *, gpu_only: bool) -> pricing.InstanceType:
    entry = pricing.CATALOG.get(name)
    allowed = [t.name for t in pricing.CATALOG.values() if t.gpus > 0 or not gpu_only]
    if entry is None or (gpu_only and entry.gpus == 0):
        kind = "GPU instance type" if gpu_only else "instance type"
        raise ConfigError(
            key,
            f"{name!r} is not a supported {kind}",
            "use one of " + ", ".join(allowed) + " (catalog: infra/pricing.py)",
        )
    if region not in entry.regions:
        raise ConfigError(
            key,
            f"{name} is not offered in {region}; regions that offer it: " + ", ".join(entry.regions),
            f"set `aws:region` to one of those regions or choose a type offered in {region}",
        )
    return entry


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


def check(cfg: StackConfig) -> None:
    """Raise `ConfigError` for the first invalid value or combination in `cfg`."""
    if cfg.region not in pricing.REGIONS:
        raise ConfigError(
            "aws:region",
            f"{cfg.region!r} is not a supported region",
            "use one of " + ", ".join(sorted(pricing.REGIONS)),
        )
    vpc = _cidr("vpc-cidr", cfg.vpc_cidr)
    if not vpc.is_private or not 16 <= vpc.prefixlen <= 24:
        raise ConfigError(
            "vpc-cidr",
            f"{cfg.vpc_cidr} must be a private range of /16 to /24",
            "use e.g. 10.42.0.0/16 (RFC 1918)",
        )
    _in_range("availability-zone-count", cfg.num_availability_zones, 2, 4)
    zone = cfg.training_availability_zone
    if zone is not None and (not ZONE_NAME.match(zone) or not zone.startswith(cfg.region)):
        raise ConfigError(
            "training-availability-zone",
            f"{zone!r} is not a zone of {cfg.region}",
            f"use a zone name like {cfg.region}a, or unset it",
        )
    unknown = sorted(set(cfg.interface_endpoints) - INTERFACE_SERVICES)
    if unknown or len(set(cfg.interface_endpoints)) != len(cfg.interface_endpoints):
        raise ConfigError(
            "interface-endpoints",
            f"unknown or repeated services {unknown}",
            "list each of " + ", ".join(sorted(INTERFACE_SERVICES)) + " at most once",
        )
    missing = [s for s in SSM_SERVICES if s not in cfg.interface_endpoints]
    if missing and not cfg.egress_enabled:
        raise ConfigError(
            "interface-endpoints",
            f"{missing} missing while egress is disabled, so Session Manager could not reach the instances",
            "add them, or set `egress-enabled: true`",
        )

    trainer = _instance_type("trainer-instance-type", cfg.trainer_instance_type, cfg.region, gpu_only=True)
    _in_range("trainer-count", cfg.num_trainers, 1, 64)
    if cfg.trainer_market not in ("on-demand", "spot"):
        raise ConfigError("trainer-market", f"{cfg.trainer_market!r} is not a market", "use `on-demand` or `spot`")
    on_demand = float(trainer.usd_per_hour[cfg.region])
    cap = cfg.trainer_spot_max_price
    if cfg.trainer_market == "spot" and cap is None:
        raise ConfigError(
            "trainer-spot-max-price",
            "is required with `trainer-market: spot` so the budget guard has an upper bound",
            f"set a cap in USD/h per node, at most the on-demand {on_demand}",
        )
    if cfg.trainer_market == "on-demand" and cap is not None:
        raise ConfigError(
            "trainer-spot-max-price",
            "is set but `trainer-market` is on-demand",
            "remove it, or set `trainer-market: spot`",
        )
    if cap is not None and not 0 < cap <= on_demand:
        raise ConfigError(
            "trainer-spot-max-price",
            f"{cap} is not within (0, on-demand price {on_demand}] USD/h",
            "set a positive cap no higher than on-demand",
        )
    for key, ami in (("trainer-ami", cfg.trainer_ami), ("serving-ami", cfg.serving_ami)):
        if ami is not None and not AMI_ID.match(ami):
            raise ConfigError(
                key,
                f"{ami!r} is not an AMI id",
                "use an id like ami-0123456789abcdef0, or unset it",
            )
    _in_range("trainer-root-volume-gb", cfg.trainer_root_volume_gb, MIN_GPU_ROOT_GB, 16384, " GB")
    _in_range("trainer-scratch-volume-gb", cfg.trainer_scratch_volume_gb, 0, 16384, " GB")

    server = _instance_type("serving-instance-type", cfg.serving_instance_type, cfg.region, gpu_only=False)
    min_root = MIN_GPU_ROOT_GB if server.gpus else MIN_CPU_ROOT_GB
    _in_range("serving-root-volume-gb", cfg.serving_root_volume_gb, min_root, 16384, " GB")
    _in_range("serving-port", cfg.serving_port, 1024, 65535)
    for text in cfg.serving_allowed_cidrs:
        net = _cidr("serving-allowed-cidrs", text)
        if net.prefixlen < 8:
            raise ConfigError(
                "serving-allowed-cidrs",
                f"{text} would expose the inference port to a large part of the internet",
                "list the VPC range or your VPN/peered ranges (prefix /8 or longer)",
            )
    if not MODEL_NAME.match(cfg.model_name):
        raise ConfigError(
            "model-name",
            f"{cfg.model_name!r} has characters outside [A-Za-z0-9_.-]",
            "use a short name like mlp-binary",
        )
    _in_range("kms-deletion-window-days", cfg.kms_deletion_window_days, 7, 30)
    _in_range("checkpoint-noncurrent-days", cfg.checkpoint_noncurrent_days, 1, 3650)
    _in_range("logs-expiration-days", cfg.logs_expiration_days, 1, 3650)
    _in_range("estimated-s3-gb", cfg.estimated_s3_gb, 0, 10_000_000)
    if cfg.max_hourly_usd is not None and cfg.max_hourly_usd <= 0:
        raise ConfigError(
            "max-hourly-usd",
            f"{cfg.max_hourly_usd} is not positive",
            "set a cap in USD/h, or unset it",
        )
    if cfg.training_hours is not None and cfg.training_hours <= 0:
        raise ConfigError(
            "training-hours",
            f"{cfg.training_hours} is not positive",
            "set the expected run length in hours, or unset it",
        )
