"""Fixtures for policy tests: the real program's resources, recorded under Pulumi mocks."""

from __future__ import annotations

import pytest

from infra.tools.offline import ROOT, ProgramRun, load_stack_config, run_program
from infra.tools.policycheck import load_rules

EFA_SPOT_EGRESS = {
    "stratus:trainer-instance-type": "p4d.24xlarge",
    "stratus:trainer-market": "spot",
    "stratus:trainer-spot-max-price": 15,
    "stratus:egress-enabled": True,
    "stratus:serving-instance-type": "g5.xlarge",
    "stratus:serving-root-volume-gb": 100,
}


@pytest.fixture(scope="session")
def rules():
    """The pack's rule module, imported as the Pulumi CLI imports it."""
    return load_rules()


@pytest.fixture(scope="session")
def example_run() -> ProgramRun:
    """The program run with Pulumi.example.yaml."""
    return run_program(load_stack_config(ROOT / "Pulumi.example.yaml"))


@pytest.fixture(scope="session")
def efa_spot_run() -> ProgramRun:
    """A second stack shape: EFA type on spot, egress on, GPU serving host, no budget cap."""
    config = {**load_stack_config(ROOT / "Pulumi.example.yaml"), **EFA_SPOT_EGRESS}
    config.pop("stratus:max-hourly-usd")
    return run_program(config)
