"""Helpers for infra and policy tests: the example config, broken copies of a run."""

from __future__ import annotations

import copy
from collections.abc import Callable

from infra.tools.offline import ROOT, ProgramRun, Registered, load_stack_config

EXAMPLE = ROOT / "Pulumi.example.yaml"


def example_config(**overrides) -> dict:
    """The config of Pulumi.example.yaml with `overrides` (kebab keys; None removes a key)."""
    config = load_stack_config(EXAMPLE)
    for key, value in overrides.items():
        full = key if ":" in key else f"stratus:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    return config


EFA_SPOT_EGRESS = {
    "trainer-instance-type": "p4d.24xlarge",
    "trainer-market": "spot",
    "trainer-spot-max-price": 15,
    "egress-enabled": True,
    "serving-instance-type": "g5.xlarge",
    "serving-root-volume-gb": 100,
    "serving-grpc-port": 0,
    "trainer-scratch-volume-gb": 0,
    "max-hourly-usd": None,
}
"""A second shape of the stack: EFA type on spot, egress on, GPU serving over HTTP only, no scratch
volume."""


def broken(run: ProgramRun, name: str, mutate: Callable[[Registered], None]) -> ProgramRun:
    """A deep copy of `run` where `mutate` has changed the resource named `name`."""
    copied = copy.deepcopy(run)
    mutate(copied.named(name))
    return copied


def without(run: ProgramRun, name: str) -> ProgramRun:
    """A deep copy of `run` without the resource named `name`."""
    copied = copy.deepcopy(run)
    copied.resources = [r for r in copied.resources if r.name != name]
    return copied


def with_unrotated_key(run_program):
    """`run_program`, but the planned stack's KMS key does not rotate: one policy rule fails."""
    import copy

    def run(config, **kwargs):
        result = copy.deepcopy(run_program(config, **kwargs))
        key = result.named("storage-key")
        key.inputs["enableKeyRotation"] = key.state["enableKeyRotation"] = False
        return result

    return run
