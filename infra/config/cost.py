"""The stack's hourly cost estimate from its config, and the budget guard.

`estimate_cost` prices a validated `StackConfig` with the catalog (`infra/config/catalog.py`);
`enforce_budget` turns an estimate above `max-hourly-usd` into a `BudgetExceededError`, which
fails `pulumi preview` and `python -m infra.tools.plan` with the breakdown. Pure: no Pulumi.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from infra.config.catalog import CATALOG, HOURS_PER_MONTH, PRICES_AS_OF, REGIONS
from infra.config.errors import BudgetExceededError
from infra.config.stack import StackConfig

CENT_HUNDREDTHS = Decimal("0.0001")


@dataclass(frozen=True)
class CostLine:
    """One line of the estimate: `quantity` units at `unit_usd_per_hour` each."""

    item: str
    quantity: Decimal
    unit_usd_per_hour: Decimal
    usd_per_hour: Decimal


@dataclass(frozen=True)
class CostEstimate:
    """An hourly estimate whose total is exactly the sum of its (rounded) lines."""

    lines: tuple[CostLine, ...]
    total_usd_per_hour: Decimal
    run_hours: Decimal | None
    run_usd: Decimal | None

    def table(self) -> str:
        """Render the breakdown as a fixed-width text table (ASCII)."""
        rows = [f"{'item':<44} {'qty':>8} {'USD/h each':>12} {'USD/h':>10}"]
        for line in self.lines:
            rows.append(f"{line.item:<44} {line.quantity:>8} {line.unit_usd_per_hour:>12.6f} {line.usd_per_hour:>10}")
        rows.append(f"{'total':<44} {'':>8} {'':>12} {self.total_usd_per_hour:>10}")
        if self.run_hours is not None:
            rows.append(f"estimated run cost for {self.run_hours.normalize():f} h: {self.run_usd} USD")
        rows.append(
            f"prices: AWS on-demand list prices as of {PRICES_AS_OF}; data transfer, NAT data "
            "processing and API requests are usage-dependent and not included"
        )
        return "\n".join(rows)


def _line(item: str, quantity: Decimal | int, unit: Decimal) -> CostLine:
    quantity = Decimal(quantity)
    # Only the line is rounded (to 1/100 cent): the printed lines then add up to the total.
    hourly = (quantity * unit).quantize(CENT_HUNDREDTHS, rounding=ROUND_HALF_UP)
    return CostLine(item, quantity, unit, hourly)


def _trainer_price(cfg: StackConfig) -> tuple[Decimal, str]:
    """Price per node-hour and how it was chosen: spot cap, Capacity Block price, or on-demand.

    A Capacity Reservation (ODCR) bills at the on-demand rate whether used or not.
    """
    on_demand = CATALOG[cfg.trainer_instance_type].usd_per_hour[cfg.region]
    if cfg.trainer_market == "spot":
        assert cfg.trainer_spot_max_price is not None  # config validation guarantees it
        return Decimal(str(cfg.trainer_spot_max_price)), "spot cap"
    if cfg.trainer_market == "capacity-block":
        if cfg.trainer_capacity_block_usd_per_hour is not None:
            return Decimal(str(cfg.trainer_capacity_block_usd_per_hour)), "capacity block"
        return on_demand, "capacity block, on-demand price"
    if cfg.reservation_target is not None:
        return on_demand, "on-demand, reserved"
    return on_demand, "on-demand"


def _scratch_performance(cfg: StackConfig, scratch_mode: str) -> list[CostLine]:
    """gp3 IOPS above 3000 and throughput above 125 MiB/s are billed per month."""
    if scratch_mode != "ebs":
        return []
    region = REGIONS[cfg.region]
    lines = []
    extra_iops = cfg.trainer_scratch_iops - 3000
    extra_mibps = cfg.trainer_scratch_throughput_mibps - 125
    if extra_iops:
        lines.append(_line("gp3 IOPS above 3000, scratch", cfg.num_trainers * extra_iops,
                           region.gp3_iops_month / HOURS_PER_MONTH))  # fmt: skip
    if extra_mibps:
        lines.append(_line("gp3 MiB/s above 125, scratch", cfg.num_trainers * extra_mibps,
                           region.gp3_mibps_month / HOURS_PER_MONTH))  # fmt: skip
    return lines


def estimate_cost(cfg: StackConfig) -> CostEstimate:
    """Estimate the stack's hourly cost from its config.

    Spot nodes are priced at their configured price cap, the most they can cost; Capacity Block
    nodes at `trainer-capacity-block-usd-per-hour` when set.

    Args:
        cfg: a validated stack config (region and instance types are in the catalog).

    Returns:
        The breakdown; `total_usd_per_hour` is the exact sum of the lines, and the run cost is
        the total times `training-hours` when that key is set.
    """
    region = REGIONS[cfg.region]
    trainer = CATALOG[cfg.trainer_instance_type]
    server = CATALOG[cfg.serving_instance_type]
    gp3_hour = region.gp3_gb_month / HOURS_PER_MONTH
    trainer_price, market = _trainer_price(cfg)
    scratch_mode, scratch_gb = cfg.scratch
    trainer_gb = cfg.trainer_root_volume_gb + scratch_gb
    lines = [
        _line(f"training node {trainer.name} ({market})", cfg.num_trainers, trainer_price),
        _line(f"serving host {server.name}", 1, server.usd_per_hour[cfg.region]),
        _line("EBS gp3 GB, training nodes", cfg.num_trainers * trainer_gb, gp3_hour),
        _line("EBS gp3 GB, serving host", cfg.serving_root_volume_gb, gp3_hour),
        *_scratch_performance(cfg, scratch_mode),
        _line("S3 Standard GB (estimated-s3-gb)", cfg.estimated_s3_gb,
              region.s3_standard_gb_month / HOURS_PER_MONTH),
        _line("interface endpoint x AZ", len(cfg.interface_endpoints) * cfg.num_availability_zones,
              region.interface_endpoint_az_hour),
        _line("KMS customer-managed key", 1, region.kms_key_month / HOURS_PER_MONTH),
    ]  # fmt: skip
    if cfg.egress_enabled:
        lines.append(_line("NAT gateway", 1, region.nat_gateway_hour))
        lines.append(_line("public IPv4 (NAT Elastic IP)", 1, region.public_ipv4_hour))
    total = sum((line.usd_per_hour for line in lines), Decimal(0))
    run_hours = run_usd = None
    if cfg.training_hours is not None:
        run_hours = Decimal(str(cfg.training_hours))
        run_usd = (total * run_hours).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return CostEstimate(tuple(lines), total, run_hours, run_usd)


def enforce_budget(estimate: CostEstimate, max_hourly_usd: float | None) -> None:
    """Raise `BudgetExceededError` with the breakdown when the estimate exceeds the cap.

    Args:
        estimate: the stack's estimate.
        max_hourly_usd: the `max-hourly-usd` config value; None disables the guard.
    """
    if max_hourly_usd is None:
        return
    cap = Decimal(str(max_hourly_usd))
    if estimate.total_usd_per_hour > cap:
        raise BudgetExceededError(
            "max-hourly-usd",
            f"the estimated cost {estimate.total_usd_per_hour} USD/h is above the cap of {cap.normalize():f} USD/h",
            "choose fewer or smaller instances (lower `trainer-count`, a smaller "
            "`trainer-instance-type`), use spot with a lower `trainer-spot-max-price`, or raise "
            "`max-hourly-usd`. Breakdown:\n" + estimate.table(),
        )
