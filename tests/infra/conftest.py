"""Fixtures for infra tests: offline runs of the real program under Pulumi mocks."""

from __future__ import annotations

import pytest

from infra.tools.offline import ProgramRun, run_program
from tests.infra.support import EFA_SPOT_EGRESS, example_config


@pytest.fixture(scope="session")
def example_run() -> ProgramRun:
    """The program run with Pulumi.example.yaml."""
    return run_program(example_config())


@pytest.fixture(scope="session")
def efa_spot_run() -> ProgramRun:
    """The program run with EFA_SPOT_EGRESS (EFA type on spot, egress on, GPU serving)."""
    return run_program(example_config(**EFA_SPOT_EGRESS))
