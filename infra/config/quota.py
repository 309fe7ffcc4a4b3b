"""The EC2 vCPU quotas a stack needs, and the check of one quota's value against that need.

Pure: `infra.components.quotas.check_quotas` reads each quota's value through Service Quotas at
preview (`pulumi preview` fails before anything is created) and calls `check_quota`.
Running-instance quotas count vCPUs per instance family ("Running On-Demand P instances",
"All P Spot Instance Requests", ...); instances running outside this stack count against the
same quota, so the check is a floor, not a guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.builders.netplan import replacement_nodes
from infra.config.catalog import CATALOG
from infra.config.errors import ConfigError

SERVICE_CODE = "ec2"


@dataclass(frozen=True)
class QuotaNeed:
    """The vCPUs the stack runs under one Service Quotas quota."""

    code: str
    """Quota code, e.g. `L-417A185B`."""
    name: str
    """Quota name, e.g. `Running On-Demand P instances`."""
    vcpus: int
    """vCPUs of the stack's instances counted by this quota."""
    usage: tuple[str, ...]
    """What makes up the need, e.g. `4 x p5.48xlarge`."""
    key: str
    """The config key to change when the quota is too small."""

    def describe(self) -> str:
        """One line for the plan: quota, code, need."""
        return f"{SERVICE_CODE}/{self.code} '{self.name}' >= {self.vcpus} vCPUs ({' + '.join(self.usage)})"


def quota_needs(cfg: Any) -> list[QuotaNeed]:
    """The quotas the stack's instances count against, with the vCPUs they need (sorted by code)."""
    trainer, server = CATALOG[cfg.trainer_instance_type], CATALOG[cfg.serving_instance_type]
    spot = cfg.trainer_market == "spot"
    # Spot nodes run with capacity rebalancing: a replacement starts when EC2 signals a rebalance
    # risk, before the node it replaces is gone, so the group can run over its size for a while.
    spare = replacement_nodes(cfg.num_trainers) if spot else 0
    entries = [
        (trainer.quota[2:] if spot else trainer.quota[:2], cfg.num_trainers, spare, trainer, "trainer-count"),
        # An instance refresh launches each replacement before draining the host it replaces:
        # up to twice the group's ceiling runs for a while.
        (server.quota[:2], 2 * cfg.serving_ceiling, 0, server, "serving-instance-type"),
    ]
    needs: dict[str, QuotaNeed] = {}
    for (code, name), count, extra, itype, key in entries:
        prev = needs.get(code)
        usage = f"({count} + {extra} rebalancing) x {itype.name}" if extra else f"{count} x {itype.name}"
        vcpus = (count + extra) * itype.vcpus
        if prev is None:
            needs[code] = QuotaNeed(code, name, vcpus, (usage,), key)
        else:
            needs[code] = QuotaNeed(code, name, prev.vcpus + vcpus, (*prev.usage, usage), prev.key)
    return [needs[c] for c in sorted(needs)]


class QuotaError(ConfigError):
    """The account's quota is below what the stack needs."""


def check_quota(need: QuotaNeed, value: float, region: str) -> None:
    """Raise `QuotaError` naming the quota, the need and the current value when value < need."""
    if value >= need.vcpus:
        return
    raise QuotaError(
        need.key,
        f"the stack needs {need.vcpus} vCPUs ({' + '.join(need.usage)}) under the EC2 quota "
        f"'{need.name}' ({SERVICE_CODE}/{need.code}) but its value in {region} is {value:g}",
        f"request an increase (`aws service-quotas request-service-quota-increase --service-code "
        f"{SERVICE_CODE} --quota-code {need.code} --desired-value {need.vcpus} --region {region}`), "
        "use fewer or smaller instances, or set `quota-check: false` if the quota does not apply",
    )
