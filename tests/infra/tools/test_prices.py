"""The price refresh: GetProducts items (the API's JSON shape) to catalog rows."""

from __future__ import annotations

import json
from decimal import Decimal

from infra.tools.prices import parse_products, report


def _item(instance_type: str, region: str, usd: str, **attrs: str) -> str:
    attributes = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        **attrs,
    }
    dimension = {"unit": "Hrs", "pricePerUnit": {"USD": usd}, "description": f"${usd} per On Demand Linux"}
    return json.dumps(
        {
            "product": {"sku": "SKU", "attributes": attributes},
            "terms": {"OnDemand": {"SKU.JRTCKXETXF": {"priceDimensions": {"SKU.JRTCKXETXF.6YS6EN2CT7": dimension}}}},
        }
    )


def test_only_the_plain_linux_on_demand_price_is_taken_and_compared_with_the_catalog():
    items = [
        _item("p5.48xlarge", "us-east-1", "55.0400000000"),
        _item("p5.48xlarge", "us-east-2", "55.0400000000"),
        _item("p5.48xlarge", "us-west-2", "60.0000000000"),
        _item("p5.48xlarge", "us-east-1", "98.3200000000", operatingSystem="Windows"),
        _item("p5.48xlarge", "us-east-1", "0.0000000000", capacitystatus="UnusedCapacityReservation"),
    ]
    prices = parse_products(items)
    assert prices == {
        ("p5.48xlarge", "us-east-1"): Decimal("55.04"),
        ("p5.48xlarge", "us-east-2"): Decimal("55.04"),
        ("p5.48xlarge", "us-west-2"): Decimal("60"),
    }
    rows = report(prices)
    assert rows[1].split() == ["p5.48xlarge", "us-east-1", "55.04", "55.04"]
    assert rows[2].endswith("not priced in catalog (stack config: *-on-demand-usd-per-hour)")  # sold there
    assert rows[3].endswith("CHANGED")
    assert report({("p5.48xlarge", "sa-east-1"): Decimal("70")})[1].endswith("region not in catalog")
    assert len(report(prices, ["us-east-2"])) == 2
