"""The stack's config: read once from `Pulumi.<stack>.yaml`, typed, validated, frozen.

Components never call `pulumi.Config`; `__main__.py` calls `load_config()` and hands the
`StackConfig` (or values taken from it) to each component. Keys are kebab-case in the `stratus`
namespace (`pulumi config set trainer-count 4`), plus `aws:region`. An unknown key, a malformed
value or an inconsistent combination raises `ConfigError` naming the key and the fix, so
`pulumi preview` fails before anything is planned; several bad keys raise one `ConfigErrors`
listing every one of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infra.builders.netplan import AddressBudget
from infra.config import capacity, validate
from infra.config.catalog import AMI_FAMILIES, DEFAULT_AMI_FAMILY, AmiFamily
from infra.config.errors import ConfigError, ConfigErrors, collect

NAMESPACE = "stratus"
DEFAULT_INTERFACE_ENDPOINTS = ("ssm", "ssmmessages", "ec2messages")
"""Session Manager's endpoints. Nothing on the hosts calls KMS or CloudWatch Logs directly (S3 and
SSM use the stack key server-side), so `kms` and `logs` endpoints are opt-in."""


def _key(key: str, default: Any = None) -> Any:
    return field(default=default, metadata={"key": key})


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    """Every setting of one stack; see `Pulumi.example.yaml` for a commented example."""

    region: str = _key("aws:region")
    """AWS region (`aws:region`, required); one of `catalog.REGIONS` (where a catalog GPU type is
    sold)."""
    vpc_cidr: str = _key("vpc-cidr", "10.42.0.0/16")
    """Private IPv4 range of the VPC, prefix /16 to /24."""
    num_availability_zones: int = _key("availability-zone-count", 2)
    """Availability zones the VPC spans (2-4); one private subnet in each."""
    training_availability_zone: str | None = _key("training-availability-zone")
    """Zone of the training subnet and placement group; default: the first zone offering the
    training type."""
    zone_offerings_lookup: bool = _key("zone-offerings-lookup", True)
    """Ask EC2 at preview which zones offer the instance types (needs AWS credentials)."""
    egress_enabled: bool = _key("egress-enabled", False)
    """Add a public subnet, internet gateway and NAT gateway for outbound internet (pip, dnf
    mirrors outside S3); off by default: instances reach AWS only through VPC endpoints."""
    interface_endpoints: tuple[str, ...] = _key("interface-endpoints", DEFAULT_INTERFACE_ENDPOINTS)
    """Interface VPC endpoints to create (services from `validate.INTERFACE_SERVICES`)."""
    trainer_instance_type: str = _key("trainer-instance-type", "g5.12xlarge")
    """GPU instance type of the training nodes (a GPU type from the catalog)."""
    num_trainers: int = _key("trainer-count", 2)
    """Number of training nodes (1-64)."""
    trainer_market: str = _key("trainer-market", "on-demand")
    """`on-demand`, `spot` or `capacity-block` (an EC2 Capacity Block for ML)."""
    trainer_spot_max_price: float | None = _key("trainer-spot-max-price")
    """Spot price cap in USD/h per node; required with `trainer-market: spot`."""
    trainer_on_demand_usd_per_hour: float | None = _key("trainer-on-demand-usd-per-hour")
    """On-demand price of the training type per instance-hour in this region, for the estimate,
    the budget guard and the spot cap's upper bound; unset: the catalog's price. Required for an
    estimate where the catalog has no price (`python -m infra.tools.prices REGION` lists it)."""
    trainer_capacity_reservation_id: str | None = _key("trainer-capacity-reservation-id")
    """Capacity Reservation the nodes launch into (`cr-...`): an On-Demand Capacity Reservation,
    or the reservation of the Capacity Block (required with `trainer-market: capacity-block`)."""
    trainer_capacity_reservation_group_arn: str | None = _key("trainer-capacity-reservation-group-arn")
    """Resource group of On-Demand Capacity Reservations the nodes launch into (instead of an id)."""
    trainer_capacity_reservation_preference: str | None = _key("trainer-capacity-reservation-preference")
    """Without a target: `open` (default; use any matching open reservation) or `none`."""
    trainer_capacity_block_usd_per_hour: float | None = _key("trainer-capacity-block-usd-per-hour")
    """The Capacity Block's price per instance-hour (its upfront fee / instance-hours), for the
    estimate; unset: the estimate uses the on-demand price."""
    trainer_capacity_block_end: str | None = _key("trainer-capacity-block-end")
    """When the Capacity Block ends, ISO-8601 with a UTC offset (`2026-12-10T11:30:00Z`, the block's
    `EndDate`); the plan prints it and the time EC2 starts terminating the nodes (30 minutes
    before). Only with `trainer-market: capacity-block`."""
    trainer_placement_group: bool | None = _key("trainer-placement-group")
    """Launch the nodes in a cluster placement group; default: yes, unless the nodes target a
    reservation (the reservation decides placement; a Capacity Block is already co-located)."""
    trainer_ami: str | None = _key("trainer-ami")
    """Pinned AMI id of the training nodes (`scripts/plan.sh --update-ami` writes it); unset: the
    newest Deep Learning AMI at each preview, and the nodes ignore that it changed."""
    trainer_ami_framework: str = _key("trainer-ami-framework", DEFAULT_AMI_FAMILY)
    """Deep Learning AMI family of the nodes (`catalog.AMI_FAMILIES`: `pytorch-2.13`, ..., `base`):
    unpinned, the image is the family's SSM public parameter
    (`/aws/service/deeplearning/ami/x86_64/<type>/latest/ami-id`); `--update-ami` pins from it.
    The catalog records the torch version the family carries; the plan shows it."""
    trainer_follow_launch_template: bool = _key("trainer-follow-launch-template", False)
    """Replace running nodes when their launch template changes (new AMI, user data, volumes);
    off: only new nodes get the new template."""
    trainer_root_volume_gb: int = _key("trainer-root-volume-gb", 200)
    """Root volume of each training node in GB (gp3, encrypted with the stack key)."""
    trainer_scratch_volume_gb: int | None = _key("trainer-scratch-volume-gb")
    """EBS scratch volume mounted at /scratch in GB; 0: none; unset: the type's local NVMe disks
    (striped) when it has them, else 500."""
    trainer_scratch_iops: int = _key("trainer-scratch-iops", 3000)
    """Provisioned IOPS of the EBS scratch volume (gp3, 3000-16000)."""
    trainer_scratch_throughput_mibps: int = _key("trainer-scratch-throughput-mibps", 125)
    """Provisioned throughput of the EBS scratch volume in MiB/s (gp3, 125-1000, at most IOPS/4)."""
    quota_check: bool = _key("quota-check", True)
    """At preview, compare the vCPUs the stack runs with the account's EC2 quotas (Service Quotas)."""
    serving_instance_type: str = _key("serving-instance-type", "c7i.xlarge")
    """Instance type of the serving host, GPU or CPU (from the catalog)."""
    serving_on_demand_usd_per_hour: float | None = _key("serving-on-demand-usd-per-hour")
    """On-demand price of the serving type per hour in this region, for the estimate; unset: the
    catalog's price (the estimate marks the line unpriced where the catalog has none)."""
    serving_ami: str | None = _key("serving-ami")
    """AMI id override for the serving host; default: Deep Learning AMI for GPU types,
    Amazon Linux 2023 for CPU types."""
    serving_root_volume_gb: int = _key("serving-root-volume-gb", 50)
    """Root volume of the serving host in GB (gp3, encrypted with the stack key)."""
    serving_port: int = _key("serving-port", 8000)
    """TCP port of the inference server (1024-65535)."""
    serving_grpc_port: int = _key("serving-grpc-port", 8001)
    """TCP port of the server's Open Inference Protocol gRPC endpoint (1024-65535, not
    `serving-port`); 0: off. Reachable from `serving-allowed-cidrs` only, like the HTTP port."""
    serving_allowed_cidrs: tuple[str, ...] = _key("serving-allowed-cidrs", ())
    """IPv4 ranges allowed to reach the inference ports (HTTP and gRPC); default: the VPC's own
    range."""
    num_serving: int = _key("serving-count", 2)
    """Serving hosts the Auto Scaling group keeps running (1-20; its minimum and desired size),
    spread over the stack's private subnets (one per zone) behind the internal load balancer."""
    serving_max_count: int | None = _key("serving-max-count")
    """Most serving hosts CPU scaling may run (`serving-count` to 20); unset: `serving-count`.
    Above `serving-count` only with `serving-scale-cpu-percent`."""
    serving_scale_cpu_percent: float | None = _key("serving-scale-cpu-percent")
    """Opt-in target tracking: keep the hosts' average CPU near this percentage (10-90) by scaling
    between `serving-count` and `serving-max-count`; unset: a fixed `serving-count`."""
    serving_drain_seconds: int = _key("serving-drain-seconds", 120)
    """Deregistration delay of the load balancer's target groups (0-3600 s): a host leaving the
    group (scale-in, instance refresh) gets no new connections and this long to finish the
    requests in flight before it is terminated."""
    model_name: str = _key("model-name", "mlp-binary")
    """Model the serving host serves from `s3://<models_bucket>/models/<model-name>/`; the
    name rule is `runtime.contract.MODEL_NAME_RE` (at most 64 characters, no `..`)."""
    kms_deletion_window_days: int = _key("kms-deletion-window-days", 30)
    """Waiting period before the stack key is deleted after `pulumi destroy` (7-30)."""
    checkpoint_noncurrent_days: int = _key("checkpoint-noncurrent-days", 30)
    """Days after which overwritten/deleted checkpoint object versions expire."""
    logs_expiration_days: int = _key("logs-expiration-days", 365)
    """Days after which access and flow logs expire."""
    force_destroy_buckets: bool = _key("force-destroy-buckets", False)
    """Let `pulumi destroy` delete non-empty buckets (for throw-away stacks only)."""
    max_hourly_usd: float | None = _key("max-hourly-usd")
    """Budget guard: preview fails when the estimated hourly cost exceeds this."""
    training_hours: float | None = _key("training-hours")
    """Expected hours of the training run; adds an estimated run cost to the estimate."""
    estimated_s3_gb: int = _key("estimated-s3-gb", 100)
    """GB expected in the buckets, for the storage line of the cost estimate."""

    def __post_init__(self) -> None:
        if not self.serving_allowed_cidrs:
            # Default resolved here, not in parsing, so every construction path gets it.
            object.__setattr__(self, "serving_allowed_cidrs", (self.vpc_cidr,))
        collect(*self._checks())

    def _checks(self) -> list:
        """Every validation group; `collect` runs all and reports every failing key."""
        return [
            lambda: validate.check_region(self.region),
            lambda: validate.check_network(
                region=self.region,
                vpc_cidr=self.vpc_cidr,
                num_availability_zones=self.num_availability_zones,
                training_availability_zone=self.training_availability_zone,
                interface_endpoints=self.interface_endpoints,
                egress_enabled=self.egress_enabled,
            ),
            lambda: validate.check_trainer(
                region=self.region,
                instance_type_name=self.trainer_instance_type,
                num_trainers=self.num_trainers,
                market=self.trainer_market,
                spot_max_price=self.trainer_spot_max_price,
                on_demand_usd_per_hour=self.trainer_on_demand_usd_per_hour,
                ami=self.trainer_ami,
                root_volume_gb=self.trainer_root_volume_gb,
                scratch_volume_gb=self.trainer_scratch_volume_gb or 0,
                ami_framework=self.trainer_ami_framework,
            ),
            lambda: capacity.check_capacity(self),
            lambda: capacity.check_scratch(self),
            lambda: self.address_budget,
            lambda: validate.check_serving(
                region=self.region,
                instance_type_name=self.serving_instance_type,
                ami=self.serving_ami,
                root_volume_gb=self.serving_root_volume_gb,
                port=self.serving_port,
                grpc_port=self.serving_grpc_port,
                allowed_cidrs=self.serving_allowed_cidrs,
                model_name=self.model_name,
            ),
            lambda: validate.check_serving_group(
                count=self.num_serving,
                max_count=self.serving_max_count,
                scale_cpu_percent=self.serving_scale_cpu_percent,
                drain_seconds=self.serving_drain_seconds,
            ),
            lambda: validate.check_operations(
                kms_deletion_window_days=self.kms_deletion_window_days,
                checkpoint_noncurrent_days=self.checkpoint_noncurrent_days,
                logs_expiration_days=self.logs_expiration_days,
                estimated_s3_gb=self.estimated_s3_gb,
                max_hourly_usd=self.max_hourly_usd,
                training_hours=self.training_hours,
                serving_on_demand_usd_per_hour=self.serving_on_demand_usd_per_hour,
            ),
        ]

    @property
    def address_budget(self) -> AddressBudget | None:
        """The training subnet's addresses and their consumers (None for an invalid VPC or type).

        Raises:
            ConfigError: the subnet is too small (`validate.check_addresses`).
        """
        return validate.check_addresses(
            vpc_cidr=self.vpc_cidr,
            instance_type_name=self.trainer_instance_type,
            num_trainers=self.num_trainers,
            interface_endpoints=self.interface_endpoints,
            serving_hosts=self.serving_ceiling,
            zones=self.num_availability_zones,
        )

    @property
    def ami_family(self) -> AmiFamily:
        """The catalog entry of `trainer-ami-framework`."""
        return AMI_FAMILIES[self.trainer_ami_framework]

    @property
    def capacity_block_end(self):
        """`trainer-capacity-block-end` as an aware `datetime`, or None."""
        return capacity.parse_block_end(self.trainer_capacity_block_end)

    @property
    def reservation_target(self) -> dict[str, str] | None:
        """The `capacity_reservation_target` of the nodes, or None when they target nothing."""
        if self.trainer_capacity_reservation_id:
            return {"capacity_reservation_id": self.trainer_capacity_reservation_id}
        if self.trainer_capacity_reservation_group_arn:
            return {"capacity_reservation_resource_group_arn": self.trainer_capacity_reservation_group_arn}
        return None

    @property
    def use_placement_group(self) -> bool:
        """Cluster placement group: as configured, else only when no reservation is targeted."""
        if self.trainer_placement_group is not None:
            return self.trainer_placement_group
        return self.reservation_target is None

    @property
    def serving_ceiling(self) -> int:
        """Most serving hosts in service outside an instance refresh (`serving-max-count`, else
        `serving-count`)."""
        return self.serving_max_count if self.serving_max_count is not None else self.num_serving

    @property
    def scratch(self) -> tuple[str, int]:
        """(`nvme`, 0), (`ebs`, GB) or (`none`, 0): where the nodes' /scratch lives."""
        return capacity.scratch_choice(self.trainer_instance_type, self.trainer_scratch_volume_gb)


FIELDS = {f.metadata["key"]: f for f in dataclasses.fields(StackConfig)}
"""Config key -> dataclass field."""


def _convert(key: str, type_name: str, raw: Any) -> Any:
    """Convert one raw config value (a string from Pulumi, or already typed) to `type_name`."""
    base = type_name.replace(" | None", "")
    try:
        if base == "str":
            if isinstance(raw, datetime):  # a YAML timestamp read by the offline plan
                return raw.isoformat()
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError
            return raw.strip()
        if base == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).strip().lower() not in ("true", "false"):
                raise ValueError
            return str(raw).strip().lower() == "true"
        if base == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        if base == "float":
            if isinstance(raw, bool) or not math.isfinite(float(raw)):
                raise ValueError
            return float(raw)
        if base == "tuple[str, ...]":
            items = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError
            return tuple(items)
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    else:
        raise AssertionError(f"no converter for field type {type_name}")
    expected, hint = {
        "str": ("a non-empty string", "text"),
        "bool": ("true or false", "true"),
        "int": ("an integer", "4"),
        "float": ("a number", "12.5"),
    }.get(base, ("a list of strings", '["10.0.0.0/16"]'))
    raise ConfigError(key, f"{raw!r} is not {expected}", f"set it like `{hint}`")


def parse_config(raw: Mapping[str, Any]) -> StackConfig:
    """Build a validated `StackConfig` from raw key/value pairs.

    Args:
        raw: config keys without the `stratus:` namespace (plus `aws:region`) mapped to the
            values Pulumi holds (strings; lists as JSON) or already typed values.

    Returns:
        The frozen, validated config.

    Raises:
        ConfigError: an unknown key, a malformed value, or an invalid combination.
    """
    kwargs: dict[str, Any] = {}
    problems: list[ConfigError] = []
    for key, value in raw.items():
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            fix = f"did you mean `{close[0]}`?" if close else "remove it"
            problems.append(
                ConfigError(key, "is not a stratus config key", f"{fix} Known keys: " + ", ".join(sorted(FIELDS)))
            )
            continue
        if value is None:
            continue
        f = FIELDS[key]
        try:
            kwargs[f.name] = _convert(key, str(f.type), value)
        except ConfigError as e:
            problems.append(e)
    if "region" not in kwargs and "aws:region" not in {p.key for p in problems}:
        problems.append(ConfigError("aws:region", "is not set", "run `pulumi config set aws:region us-east-1`"))
    if "region" in kwargs:
        try:
            config = StackConfig(**kwargs)
        except ConfigError as e:
            # A key that failed to parse took its default: its own problem is the one to report.
            unparsed = {p.key for p in problems}
            problems += [x for x in getattr(e, "errors", [e]) if x.key not in unparsed]
        else:
            if not problems:
                return config
    if len(problems) == 1:
        raise problems[0]
    raise ConfigErrors(problems)


def load_config() -> StackConfig:
    """Read the current stack's config through Pulumi and validate it (call once per run)."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    # pulumi.Config only answers for keys we ask about; list every set key (explicit config and
    # the PULUMI_CONFIG bag) so a misspelt key is an error instead of a silently ignored one.
    known = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    ours = pulumi.Config(NAMESPACE)
    raw: dict[str, Any] = {
        key.split(":", 1)[1]: ours.get(key.split(":", 1)[1]) for key in known if key.startswith(f"{NAMESPACE}:")
    }
    raw["aws:region"] = pulumi.Config("aws").get("region")
    return parse_config(raw)
