"""Validation of the training nodes' capacity (reservations, Capacity Blocks, placement) and scratch.

Follows AWS's reference for distributed training (aws-samples/awsome-distributed-training): nodes
that target a Capacity Reservation, or a Capacity Block for ML (`MarketType: capacity-block` plus
the block's reservation id), launch without the stack's cluster placement group, because the
reservation decides where they run (a Capacity Block is already co-located in an UltraCluster).
Pure functions of a config-like object; each raises `ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import re
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
    elif cfg.trainer_capacity_block_usd_per_hour is not None:
        raise ConfigError(
            "trainer-capacity-block-usd-per-hour",
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
    price = cfg.trainer_capacity_block_usd_per_hour
    if price is not None and price <= 0:
        raise ConfigError(
            "trainer-capacity-block-usd-per-hour", f"{price} is not positive", "set the block's USD per instance-hour"
        )


def scratch_choice(instance_type: str, scratch_volume_gb: int | None) -> tuple[str, int]:
    """Where /scratch lives: (`nvme`, 0) on a type with local NVMe unless an EBS size is set,
    (`ebs`, GB) with an EBS volume, (`none`, 0) when the size is 0."""
    if scratch_volume_gb is None:
        if CATALOG[instance_type].nvme_disks:
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
