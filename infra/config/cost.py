"""The stack's hourly cost estimate from its config, and the budget guard.

`estimate_cost` prices a validated `StackConfig` with the catalog (`infra/config/catalog.py`) and
the price keys of the config; `enforce_budget` turns an estimate above `max-hourly-usd` into a
`BudgetExceededError`, which fails `pulumi preview` and `python -m infra.tools.plan` with the
breakdown. In a region the stack accepts but the catalog has no price for, the lines it cannot
price print as `unknown`, the total covers the priced lines only and says so, and each missing
price is named with the key or catalog row that supplies it; the budget guard then refuses to
pass (it cannot show the stack is under the cap). Pure: no Pulumi.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from infra.config.catalog import CATALOG, HOURS_PER_MONTH, PRICES_AS_OF, REGION_PRICES, RegionPrices
from infra.config.errors import BudgetExceededError, ConfigError
from infra.config.stack import StackConfig

CENT_HUNDREDTHS = Decimal("0.0001")


@dataclass(frozen=True)
class CostLine:
    """One line of the estimate: `quantity` units at `unit_usd_per_hour` each (None: unpriced)."""

    item: str
    quantity: Decimal
    unit_usd_per_hour: Decimal | None
    usd_per_hour: Decimal | None


@dataclass(frozen=True)
class CostEstimate:
    """An hourly estimate whose total is exactly the sum of its priced (rounded) lines."""

    lines: tuple[CostLine, ...]
    total_usd_per_hour: Decimal
    run_hours: Decimal | None
    run_usd: Decimal | None
    missing: tuple[str, ...] = ()
    """The prices the estimate lacks, each with the key or catalog row that supplies it."""

    @property
    def complete(self) -> bool:
        """Every line is priced, so the total is the stack's estimate."""
        return not self.missing

    def table(self) -> str:
        """Render the breakdown as a fixed-width text table (ASCII)."""
        rows = [f"{'item':<44} {'qty':>8} {'USD/h each':>12} {'USD/h':>10}"]
        for line in self.lines:
            unit = "unknown" if line.unit_usd_per_hour is None else f"{line.unit_usd_per_hour:.6f}"
            hourly = "unknown" if line.usd_per_hour is None else line.usd_per_hour
            rows.append(f"{line.item:<44} {line.quantity:>8} {unit:>12} {hourly:>10}")
        label = "total" if self.complete else "total of the priced lines (INCOMPLETE)"
        rows.append(f"{label:<44} {'':>8} {'':>12} {self.total_usd_per_hour:>10}")
        if self.run_hours is not None:
            at_least = "" if self.complete else "at least "
            rows.append(f"estimated run cost for {self.run_hours.normalize():f} h: {at_least}{self.run_usd} USD")
        rows += [f"no price: {note}" for note in self.missing]
        rows.append(
            f"prices: AWS on-demand list prices as of {PRICES_AS_OF}; data transfer, NAT data "
            "processing, load-balancer capacity units and API requests are usage-dependent and not included"
        )
        return "\n".join(rows)


def _line(item: str, quantity: Decimal | int, unit: Decimal | None) -> CostLine:
    quantity = Decimal(quantity)
    if unit is None:
        return CostLine(item, quantity, None, None)
    # Only the line is rounded (to 1/100 cent): the printed lines then add up to the total.
    hourly = (quantity * unit).quantize(CENT_HUNDREDTHS, rounding=ROUND_HALF_UP)
    return CostLine(item, quantity, unit, hourly)


def _on_demand(instance_type: str, region: str, override: float | None) -> Decimal | None:
    if override is not None:
        return Decimal(str(override))
    return CATALOG[instance_type].usd_per_hour.get(region)


def _trainer_price(cfg: StackConfig) -> tuple[Decimal | None, str]:
    """Price per node-hour and how it was chosen: spot cap, Capacity Block price, or on-demand
    (the catalog's, or `trainer-on-demand-usd-per-hour`); None where none is known.

    A Capacity Reservation (ODCR) bills at the on-demand rate whether used or not.
    """
    on_demand = _on_demand(cfg.trainer_instance_type, cfg.region, cfg.trainer_on_demand_usd_per_hour)
    keyed = ", configured price" if cfg.trainer_on_demand_usd_per_hour is not None else ""
    if cfg.trainer_market == "spot":
        assert cfg.trainer_spot_max_price is not None  # config validation guarantees it
        return Decimal(str(cfg.trainer_spot_max_price)), "spot cap"
    if cfg.trainer_market == "capacity-block":
        if cfg.trainer_capacity_block_usd_per_hour is not None:
            return Decimal(str(cfg.trainer_capacity_block_usd_per_hour)), "capacity block"
        return on_demand, "capacity block, on-demand price" + keyed
    if cfg.reservation_target is not None:
        return on_demand, "on-demand, reserved" + keyed
    return on_demand, "on-demand" + keyed


def _missing(cfg: StackConfig, trainer_price: Decimal | None, server_price: Decimal | None) -> tuple[str, ...]:
    tool = f"`python -m infra.tools.prices {cfg.region}` lists today's"
    notes = []
    if trainer_price is None:
        keys = "`trainer-on-demand-usd-per-hour`"
        if cfg.trainer_market == "capacity-block":
            keys = "`trainer-capacity-block-usd-per-hour` (or " + keys + ")"
        notes.append(f"{cfg.trainer_instance_type} in {cfg.region}: set {keys}; {tool}")
    if server_price is None:
        notes.append(f"{cfg.serving_instance_type} in {cfg.region}: set `serving-on-demand-usd-per-hour`; {tool}")
    if cfg.region not in REGION_PRICES:
        notes.append(
            f"EBS, S3, endpoint, KMS, NAT and load-balancer prices of {cfg.region}: add its `REGION_PRICES` row to "
            "infra/config/catalog.py (from the AWS pricing pages named there)"
        )
    return tuple(notes)


def _scratch_performance(cfg: StackConfig, scratch_mode: str) -> list[CostLine]:
    """gp3 IOPS above 3000 and throughput above 125 MiB/s are billed per month."""
    if scratch_mode != "ebs":
        return []
    region = REGION_PRICES.get(cfg.region)
    lines = []
    extra_iops = cfg.trainer_scratch_iops - 3000
    extra_mibps = cfg.trainer_scratch_throughput_mibps - 125
    if extra_iops:
        lines.append(
            _line("gp3 IOPS above 3000, scratch", cfg.num_trainers * extra_iops, _hourly(region, "gp3_iops_month"))
        )
    if extra_mibps:
        lines.append(
            _line("gp3 MiB/s above 125, scratch", cfg.num_trainers * extra_mibps, _hourly(region, "gp3_mibps_month"))
        )
    return lines


def _hourly(region: RegionPrices | None, field: str, per_month: bool = True) -> Decimal | None:
    if region is None:
        return None
    price: Decimal = getattr(region, field)
    return price / HOURS_PER_MONTH if per_month else price


def estimate_cost(cfg: StackConfig) -> CostEstimate:
    """Estimate the stack's hourly cost from its config.

    Spot nodes are priced at their configured price cap, the most they can cost; Capacity Block
    nodes at `trainer-capacity-block-usd-per-hour` when set; instances at the catalog's on-demand
    price unless `trainer-on-demand-usd-per-hour` / `serving-on-demand-usd-per-hour` is set.

    Args:
        cfg: a validated stack config (region and instance types are in the catalog).

    Returns:
        The breakdown; `total_usd_per_hour` is the exact sum of the priced lines, `missing` names
        each price the estimate lacks (then the total is a lower bound), and the run cost is the
        total times `training-hours` when that key is set.
    """
    region = REGION_PRICES.get(cfg.region)
    trainer = CATALOG[cfg.trainer_instance_type]
    server = CATALOG[cfg.serving_instance_type]
    gp3_hour = _hourly(region, "gp3_gb_month")
    trainer_price, market = _trainer_price(cfg)
    server_price = _on_demand(server.name, cfg.region, cfg.serving_on_demand_usd_per_hour)
    scratch_mode, scratch_gb = cfg.scratch
    trainer_gb = cfg.trainer_root_volume_gb + scratch_gb
    lines = [
        _line(f"training node {trainer.name} ({market})", cfg.num_trainers, trainer_price),
        # Serving hosts at the group's ceiling: CPU scaling may run that many, so the guard's bound holds.
        _line(
            f"serving host {server.name}" + (" (configured price)" if cfg.serving_on_demand_usd_per_hour else ""),
            cfg.serving_ceiling,
            server_price,
        ),
        _line("EBS gp3 GB, training nodes", cfg.num_trainers * trainer_gb, gp3_hour),
        _line("EBS gp3 GB, serving hosts", cfg.serving_ceiling * cfg.serving_root_volume_gb, gp3_hour),
        _line("network load balancer (internal)", 1, _hourly(region, "nlb_hour", per_month=False)),
        *_scratch_performance(cfg, scratch_mode),
        _line("S3 Standard GB (estimated-s3-gb)", cfg.estimated_s3_gb, _hourly(region, "s3_standard_gb_month")),
        _line(
            "interface endpoint x AZ",
            len(cfg.interface_endpoints) * cfg.num_availability_zones,
            _hourly(region, "interface_endpoint_az_hour", per_month=False),
        ),
        _line("KMS customer-managed key", 1, _hourly(region, "kms_key_month")),
    ]
    if cfg.egress_enabled:
        lines.append(_line("NAT gateway", 1, _hourly(region, "nat_gateway_hour", per_month=False)))
        lines.append(_line("public IPv4 (NAT Elastic IP)", 1, _hourly(region, "public_ipv4_hour", per_month=False)))
    total = sum((line.usd_per_hour for line in lines if line.usd_per_hour is not None), Decimal(0))
    run_hours = run_usd = None
    if cfg.training_hours is not None:
        run_hours = Decimal(str(cfg.training_hours))
        run_usd = (total * run_hours).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return CostEstimate(tuple(lines), total, run_hours, run_usd, _missing(cfg, trainer_price, server_price))


def enforce_budget(estimate: CostEstimate, max_hourly_usd: float | None) -> None:
    """Raise `BudgetExceededError` with the breakdown when the estimate exceeds the cap.

    Args:
        estimate: the stack's estimate.
        max_hourly_usd: the `max-hourly-usd` config value; None disables the guard.

    Raises:
        BudgetExceededError: the (priced part of the) estimate is above the cap.
        ConfigError: naming `max-hourly-usd`, when the estimate lacks prices, so the guard cannot
            show the stack is under the cap; the message names each missing price's key.
    """
    if max_hourly_usd is None:
        return
    cap = Decimal(str(max_hourly_usd))
    if estimate.total_usd_per_hour > cap:
        priced = "" if estimate.complete else " (its priced lines alone)"
        raise BudgetExceededError(
            "max-hourly-usd",
            f"the estimated cost{priced} {estimate.total_usd_per_hour} USD/h is above the cap of "
            f"{cap.normalize():f} USD/h",
            "choose fewer or smaller instances (lower `trainer-count`, a smaller "
            "`trainer-instance-type`), use spot with a lower `trainer-spot-max-price`, or raise "
            "`max-hourly-usd`. Breakdown:\n" + estimate.table(),
        )
    if not estimate.complete:
        raise ConfigError(
            "max-hourly-usd",
            "cannot be checked: the estimate lacks prices (" + "; ".join(estimate.missing) + ")",
            "supply them as named, or unset `max-hourly-usd`. Breakdown:\n" + estimate.table(),
        )
