"""The instance catalog's shape: where each type is sold, prices only where it is sold, consistent specs."""

from __future__ import annotations

from infra.config.catalog import CATALOG, REGION_PRICES, REGIONS, offering_regions, on_demand_usd_per_hour


def test_catalog_prices_only_regions_that_sell_the_type_and_has_sane_specs():
    for entry in CATALOG.values():
        assert entry.regions and set(entry.usd_per_hour) <= set(entry.regions) <= set(REGIONS), entry.name
        assert all(p > 0 for p in entry.usd_per_hour.values())
        assert (entry.gpus == 0) == (entry.gpu_memory_gib == 0) == (entry.gpu_model == "")
        assert entry.efa_interfaces == 0 or entry.network_gbps >= 100
    assert set(REGION_PRICES) <= set(REGIONS)
    assert offering_regions("nope") == ()


def test_regions_are_where_p4d_and_p5_are_sold_and_the_default_serving_type_is_sold_in_each():
    assert offering_regions("p5.48xlarge") == (
        "ap-northeast-1",
        "ap-south-1",
        "ap-southeast-2",
        "ca-central-1",
        "eu-north-1",
        "eu-west-2",
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
    )
    assert "eu-west-1" not in offering_regions("p5.48xlarge") and "eu-west-1" in offering_regions("p4d.24xlarge")
    assert tuple(sorted(set(offering_regions("p5.48xlarge")) | set(offering_regions("p4d.24xlarge")))) == REGIONS
    assert all(r in offering_regions("c7i.xlarge") for r in REGIONS)  # `serving-instance-type`'s default
    # sold there, but not priced by the catalog: the estimate asks for the price
    assert on_demand_usd_per_hour("p5.48xlarge", "us-east-2") is None
    assert on_demand_usd_per_hour("p5.48xlarge", "us-east-1") == CATALOG["p5.48xlarge"].usd_per_hour["us-east-1"]


def test_the_default_ami_family_carries_the_torch_the_runtime_pins():
    import re

    from infra.config.catalog import AMI_FAMILIES, DEFAULT_AMI_FAMILY
    from infra.tools.offline import ROOT

    pinned = re.search(r"^torch==(\d+\.\d+)\.", (ROOT / "requirements" / "runtime.txt").read_text(), re.M)
    assert pinned, "requirements/runtime.txt pins no torch"
    assert AMI_FAMILIES[DEFAULT_AMI_FAMILY].torch == pinned.group(1)
    for family in AMI_FAMILIES.values():
        assert family.ssm_parameter.startswith("/aws/service/deeplearning/ami/x86_64/")
        assert family.ssm_parameter.endswith("-amazon-linux-2023/latest/ami-id")
        assert (family.torch is None) == (family.name == "base")
