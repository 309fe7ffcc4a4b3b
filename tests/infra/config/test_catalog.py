"""The instance catalog's shape: prices for every region it claims, consistent specs."""

from __future__ import annotations

from infra.config.catalog import CATALOG, REGIONS, offering_regions


def test_catalog_has_prices_for_every_region_it_claims_and_sane_specs():
    for entry in CATALOG.values():
        assert entry.regions and set(entry.regions) <= set(REGIONS), entry.name
        assert all(p > 0 for p in entry.usd_per_hour.values())
        assert (entry.gpus == 0) == (entry.gpu_memory_gib == 0) == (entry.gpu_model == "")
        assert entry.efa_interfaces == 0 or entry.network_gbps >= 100
    assert offering_regions("p5.48xlarge") == ("us-east-1", "us-west-2")
    assert offering_regions("nope") == ()
