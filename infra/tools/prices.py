"""Refresh the catalog's EC2 prices from the AWS Price List API, and find where each type is sold.

    .venv/bin/python -m infra.tools.prices                 # every region that sells a catalog type
    .venv/bin/python -m infra.tools.prices us-east-2 eu-north-1

Needs AWS credentials allowed `pricing:GetProducts` (the API answers from us-east-1 for every
region). Prints one row per catalog type and region: the current on-demand price (Linux, shared
tenancy, no pre-installed software) next to the catalog's, marking rows that differ or regions the
catalog lacks (a region the catalog records as selling the type without a price: "not priced";
one it does not record: "region not in catalog"). Copy the new figures into `_CATALOG` in
`infra/config/catalog.py` and set `PRICES_AS_OF` to today; a new region also needs its
`REGION_PRICES` row (gp3, S3, NAT, endpoint and KMS prices from the pages named in that module).
Until then, a stack there can take the instance prices from `trainer-on-demand-usd-per-hour` and
`serving-on-demand-usd-per-hour`. Exit status: 0 listed, 1 the API failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from typing import Any

from infra.config.catalog import CATALOG, PRICES_AS_OF
from runtime.contract import ExitCode

FILTERS = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
"""Attributes of the list price the catalog holds."""


def parse_products(items: Iterable[str]) -> dict[tuple[str, str], Decimal]:
    """(instance type, region) -> hourly on-demand USD, from GetProducts `PriceList` JSON strings.

    Products that are not the plain Linux shared-tenancy price (`FILTERS`) are skipped, so the
    function is right however the caller filtered.
    """
    prices: dict[tuple[str, str], Decimal] = {}
    for item in items:
        product = json.loads(item)
        attrs = product.get("product", {}).get("attributes", {})
        if any(attrs.get(k) != v for k, v in FILTERS.items()):
            continue
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if dimension.get("unit") == "Hrs" and usd is not None and Decimal(usd) > 0:
                    prices[(attrs["instanceType"], attrs["regionCode"])] = Decimal(usd).normalize()
    return prices


def fetch(client: Any, instance_type: str) -> list[str]:
    """Every GetProducts item of `instance_type` with the catalog's attributes, all regions."""
    filters = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": instance_type}]
    filters += [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in FILTERS.items()]
    items: list[str] = []
    for page in client.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters):
        items += page["PriceList"]
    return items


def report(prices: dict[tuple[str, str], Decimal], regions: Iterable[str] | None = None) -> list[str]:
    """Rows: type, region, current price, catalog price, and what differs."""
    wanted = set(regions) if regions else None
    rows = [f"{'type':<14} {'region':<16} {'list USD/h':>11} {'catalog':>9}  note"]
    for (name, region), usd in sorted(prices.items()):
        if wanted is not None and region not in wanted:
            continue
        held = CATALOG[name].usd_per_hour.get(region)
        if held is not None:
            note = "" if held == usd else "CHANGED"
        elif region in CATALOG[name].regions:
            note = "not priced in catalog (stack config: *-on-demand-usd-per-hour)"
        else:
            note = "region not in catalog"
        rows.append(f"{name:<14} {region:<16} {usd:>11} {'' if held is None else held:>9}  {note}".rstrip())
    return rows


def main(argv: list[str] | None = None) -> int:
    """List current prices for the regions given (default: all); see the module docstring."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("regions", nargs="*", help="region codes to list (default: every region selling a type)")
    args = parser.parse_args(argv)
    client = boto3.client("pricing", region_name="us-east-1")
    prices: dict[tuple[str, str], Decimal] = {}
    try:
        for name in CATALOG:
            print(f"fetching {name} ...", file=sys.stderr)
            prices.update(parse_products(fetch(client, name)))
    except (BotoCoreError, ClientError) as e:
        print(f"the Price List API failed: {e}", file=sys.stderr)
        return ExitCode.FAILED
    print("\n".join(report(prices, args.regions)))
    print(f"catalog prices as of {PRICES_AS_OF}; list prices fetched {date.today().isoformat()}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
