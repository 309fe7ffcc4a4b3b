"""Validation of the training nodes' capacity (reservations, Capacity Blocks, placement) and scratch.

Follows AWS's reference for distributed training (aws-samples/awsome-distributed-training): nodes
that target a Capacity Reservation, or a Capacity Block for ML (`MarketType: capacity-block` plus
the block's reservation id), launch without the stack's cluster placement group, because the
reservation decides where they run (a Capacity Block is already co-located in an UltraCluster).
Pure functions of a config-like object; each raises `ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from infra.config.catalog import CATALOG
from infra.config.errors import ConfigError

RESERVATION_ID = re.compile(r"^cr-[0-9a-f]{17}$")
RESERVATION_GROUP_ARN = re.compile(r"^arn:aws[a-z-]*:resource-groups:[a-z0-9-]+:\d{12}:group/[A-Za-z0-9_.-]{1,128}$")
PREFERENCES = ("open", "none")
CAPACITY_BLOCK_TYPES = ("p4d.24xlarge", "p5.48xlarge")
"""Catalog types sold as Capacity Blocks for ML."""
DEFAULT_EBS_SCRATCH_GB = 500
GP3_IOPS = (3000, 16000)
GP3_MIBPS = (125, 1000)
GP3_IOPS_PER_GB = 500
GP3_MIBPS_PER_IOPS = 0.25
BLOCK_TERMINATION_MINUTES = 30
"""EC2 starts terminating a Capacity Block's instances this long before the block ends."""


def parse_block_end(text: str | None) -> datetime | None:
    """`trainer-capacity-block-end` as an aware datetime (None when unset).

    Raises:
        ConfigError: not an ISO-8601 time with a UTC offset.
    """
    if text is None:
        return None
    try:
        end = datetime.fromisoformat(text)
    except ValueError:
        end = None
    if end is None or end.tzinfo is None:
        raise ConfigError(
            "trainer-capacity-block-end",
            f"{text!r} is not an ISO-8601 time with a UTC offset",
            "copy the block's EndDate, e.g. 2026-12-10T11:30:00Z (`aws ec2 describe-capacity-reservations "
            "--capacity-reservation-ids <id> --query 'CapacityReservations[0].EndDate'`)",
        )
    return end


def block_summary(cfg: Any, now: datetime | None = None) -> list[str]:
    """What the plan and the preview say about a Capacity Block's end (empty for other markets).

    Args:
        cfg: a `StackConfig`.
        now: the current time (tests pass one); default: now, UTC.
    """
    if cfg.trainer_market != "capacity-block":
        return []
    end = cfg.capacity_block_end
    if end is None:
        return [
            "the Capacity Block's end is unknown: set stratus:trainer-capacity-block-end to its EndDate, so the "
            f"plan shows when EC2 starts terminating the nodes ({BLOCK_TERMINATION_MINUTES} min before the end)"
        ]
    now = now or datetime.now(UTC)
    cutoff = end - timedelta(minutes=BLOCK_TERMINATION_MINUTES)
    lines = [
        f"Capacity Block ends {end.astimezone(UTC):%Y-%m-%d %H:%M} UTC; EC2 starts terminating the nodes at "
        f"{cutoff.astimezone(UTC):%Y-%m-%d %H:%M} UTC: launch (or relaunch) only a run that finishes and "
        "checkpoints before then; the group cannot replace nodes after it"
    ]
    left = (cutoff - now).total_seconds() / 3600
    if left <= 0:
        lines.append("the Capacity Block is over (or in its last 30 minutes): nodes cannot launch into it")
    elif cfg.training_hours is not None and cfg.training_hours > left:
        lines.append(
            f"stratus:training-hours ({cfg.training_hours:g} h) is longer than the {left:.1f} h left before the "
            "terminations start: the run would be cut off"
        )
    return lines


def block_warnings(cfg: Any) -> list[str]:
    """`block_summary` lines that need the operator's attention (all but the plain end time)."""
    lines = block_summary(cfg)
    return lines if lines and cfg.capacity_block_end is None else lines[1:]


def check_capacity(cfg: Any) -> None:
    """Reservation target, Capacity Block, placement group and block price of the training nodes."""
    rid, group = cfg.trainer_capacity_reservation_id, cfg.trainer_capacity_reservation_group_arn
    block = cfg.trainer_market == "capacity-block"
    if rid is not None and not RESERVATION_ID.match(rid):
        raise ConfigError(
            "trainer-capacity-reservation-id",
            f"{rid!r} is not a Capacity Reservation id",
            "copy the id (cr- and 17 hex digits) from `aws ec2 describe-capacity-reservations`",
        )
    if group is not None and not RESERVATION_GROUP_ARN.match(group):
        raise ConfigError(
            "trainer-capacity-reservation-group-arn",
            f"{group!r} is not a resource group ARN",
            "use arn:aws:resource-groups:<region>:<account>:group/<name>",
        )
    if rid and group:
        raise ConfigError(
            "trainer-capacity-reservation-group-arn",
            "is set together with `trainer-capacity-reservation-id`",
            "target either one reservation (the id) or a group of reservations (the ARN), not both",
        )
    if (rid or group) and cfg.trainer_market == "spot":
        raise ConfigError(
            "trainer-market",
            "spot nodes cannot launch into a Capacity Reservation",
            "use `on-demand` (or `capacity-block` for a Capacity Block), or unset the reservation keys",
        )
    if block:
        _check_block(cfg, rid, group)
    else:
        for key, value in (
            ("trainer-capacity-block-usd-per-hour", cfg.trainer_capacity_block_usd_per_hour),
            ("trainer-capacity-block-end", cfg.trainer_capacity_block_end),
        ):
            if value is not None:
                raise ConfigError(
                    key,
                    f"is set but `trainer-market` is {cfg.trainer_market}",
                    "remove it, or set `trainer-market: capacity-block`",
                )
    pref = cfg.trainer_capacity_reservation_preference
    if pref is not None and pref not in PREFERENCES:
        raise ConfigError(
            "trainer-capacity-reservation-preference", f"{pref!r} is not a preference", "use open or none"
        )
    if pref is not None and cfg.trainer_market == "spot":
        raise ConfigError(
            "trainer-capacity-reservation-preference", "is set but spot nodes never use reservations", "remove it"
        )
    if pref is not None and (rid or group):
        raise ConfigError(
            "trainer-capacity-reservation-preference",
            "is set although the nodes target a reservation (they launch into it only)",
            "remove it; it applies only to nodes without a target",
        )
    if (rid or group) and not cfg.training_availability_zone:
        raise ConfigError(
            "training-availability-zone",
            "is not set although the nodes target a Capacity Reservation, which lives in one zone",
            "set it to the reservation's zone (`aws ec2 describe-capacity-reservations --capacity-reservation-ids "
            "<id> --query 'CapacityReservations[0].AvailabilityZone'`)",
        )
    if cfg.trainer_placement_group and (rid or group):
        raise ConfigError(
            "trainer-placement-group",
            "is true but the nodes target a Capacity Reservation, which decides their placement "
            "(a launch in another placement group fails)",
            "remove it (the default turns the group off for targeted reservations)",
        )


def _check_block(cfg: Any, rid: str | None, group: str | None) -> None:
    if cfg.trainer_instance_type not in CAPACITY_BLOCK_TYPES:
        raise ConfigError(
            "trainer-instance-type",
            f"{cfg.trainer_instance_type} is not sold as a Capacity Block for ML",
            "use one of " + ", ".join(CAPACITY_BLOCK_TYPES) + ", or `trainer-market: on-demand`",
        )
    if rid is None or group is not None:
        raise ConfigError(
            "trainer-capacity-reservation-id",
            "is required with `trainer-market: capacity-block` (the nodes launch into the block by its id)",
            "set it to the block's reservation id (`aws ec2 describe-capacity-reservations "
            "--filters Name=reservation-type,Values=capacity-block`), and unset the group ARN",
        )
    parse_block_end(cfg.trainer_capacity_block_end)
    price = cfg.trainer_capacity_block_usd_per_hour
    if price is not None and price <= 0:
        raise ConfigError(
            "trainer-capacity-block-usd-per-hour", f"{price} is not positive", "set the block's USD per instance-hour"
        )


def scratch_choice(instance_type: str, scratch_volume_gb: int | None) -> tuple[str, int]:
    """Where /scratch lives: (`nvme`, 0) on a type with local NVMe unless an EBS size is set,
    (`ebs`, GB) with an EBS volume, (`none`, 0) when the size is 0."""
    if scratch_volume_gb is None:
        entry = CATALOG.get(instance_type)  # an unknown type is reported by its own check
        if entry is not None and entry.nvme_disks:
            return "nvme", 0
        return "ebs", DEFAULT_EBS_SCRATCH_GB
    return ("ebs", scratch_volume_gb) if scratch_volume_gb else ("none", 0)


def check_scratch(cfg: Any) -> None:
    """gp3 IOPS and throughput of the EBS scratch volume within AWS's limits."""
    iops, mibps = cfg.trainer_scratch_iops, cfg.trainer_scratch_throughput_mibps
    for key, value, (low, high) in (
        ("trainer-scratch-iops", iops, GP3_IOPS),
        ("trainer-scratch-throughput-mibps", mibps, GP3_MIBPS),
    ):
        if not low <= value <= high:
            raise ConfigError(key, f"{value} is out of range for gp3", f"use {low}-{high}")
    if mibps > iops * GP3_MIBPS_PER_IOPS:
        raise ConfigError(
            "trainer-scratch-throughput-mibps",
            f"{mibps} MiB/s needs at least {int(mibps / GP3_MIBPS_PER_IOPS)} IOPS (gp3 allows 0.25 MiB/s per IOPS)",
            f"raise `trainer-scratch-iops` or lower the throughput to {int(iops * GP3_MIBPS_PER_IOPS)}",
        )
    mode, gb = cfg.scratch
    if mode == "ebs" and iops > gb * GP3_IOPS_PER_GB:
        raise ConfigError(
            "trainer-scratch-iops",
            f"{iops} IOPS on a {gb} GB volume exceeds gp3's 500 IOPS per GB",
            f"lower it to {gb * GP3_IOPS_PER_GB} or raise `trainer-scratch-volume-gb`",
        )
