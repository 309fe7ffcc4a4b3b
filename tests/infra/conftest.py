"""Fixtures for infra tests: offline runs of the real program under Pulumi mocks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The helper modules next to this file (infra_support, infra_checks, iam_sim) import by plain
# name whether or not tests/ is laid out as a package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from infra_support import EFA_SPOT_EGRESS, example_config  # noqa: E402

from infra.offline import ProgramRun, run_program  # noqa: E402


@pytest.fixture(scope="session")
def example_run() -> ProgramRun:
    """The program run with Pulumi.example.yaml."""
    return run_program(example_config())


@pytest.fixture(scope="session")
def efa_spot_run() -> ProgramRun:
    """The program run with EFA_SPOT_EGRESS (EFA type on spot, egress on, GPU serving)."""
    return run_program(example_config(**EFA_SPOT_EGRESS))
