"""The quota check of `pulumi preview`: the account's EC2 vCPU quotas against the stack's need."""

from __future__ import annotations

from typing import Any

import pulumi_aws as aws

from infra.config.quota import SERVICE_CODE, QuotaNeed, check_quota, quota_needs


def check_quotas(cfg: Any) -> list[QuotaNeed]:
    """Read each quota the stack needs through Service Quotas and fail when one is too small.

    Returns:
        The needs that were checked.

    Raises:
        QuotaError: the first quota whose value is below the need.
    """
    needs = quota_needs(cfg)
    for need in needs:
        quota = aws.servicequotas.get_service_quota(service_code=SERVICE_CODE, quota_code=need.code, region=cfg.region)
        check_quota(need, quota.value, cfg.region)
    return needs
