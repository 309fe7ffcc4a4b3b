"""Run the CrossGuard rules of `policy/` against an offline `ProgramRun`.

Builds the same objects the Pulumi engine hands to a policy pack (`ResourceValidationArgs` with
the inputs of one resource; `PolicyResource`s with outputs, parents and property dependencies
for stack rules), wrapped in pulumi-policy's unknown-checking proxy, and collects verdicts.
Used by `python -m infra.tools.plan` (`scripts/plan.sh`) and `tests/policy`.
"""

from __future__ import annotations

import copy
import importlib
import sys
from dataclasses import dataclass
from types import ModuleType

from pulumi_policy import (
    PolicyResource,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)
from pulumi_policy.policy import PolicyCustomTimeouts, PolicyResourceOptions
from pulumi_policy.proxy import unknown_checking_proxy

from infra.tools.offline import ROOT, ProgramRun, Registered

POLICY_DIR = ROOT / "policy"


def load_rules() -> ModuleType:
    """Import `policy/rules.py` the way the pack runs it (`policy/` on the import path)."""
    if str(POLICY_DIR) not in sys.path:
        sys.path.insert(0, str(POLICY_DIR))
    return importlib.import_module("rules")


@dataclass(frozen=True)
class Violation:
    """One rule violation: the rule, the resource's URN, and the message."""

    policy: str
    urn: str
    message: str


def _options(resource: Registered) -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], resource.parent or None)


def resource_args(resource: Registered) -> ResourceValidationArgs:
    """What a resource rule sees for `resource`: its inputs, behind the unknown proxy."""
    props = unknown_checking_proxy(copy.deepcopy(resource.inputs))
    return ResourceValidationArgs(resource.type, props, resource.urn, resource.name, _options(resource), None)


def stack_resources(run: ProgramRun) -> list[PolicyResource]:
    """What a stack rule sees: every custom resource with outputs and property dependencies."""
    custom = [r for r in run.resources if r.custom]
    by_urn = {
        r.urn: PolicyResource(
            r.type, unknown_checking_proxy(copy.deepcopy(r.state)), r.urn, r.name, _options(r), None, None, [], {}
        )
        for r in custom
    }
    for r in custom:
        resource = by_urn[r.urn]
        for prop, urns in r.property_dependencies.items():
            resource.property_dependencies[prop] = [by_urn[u] for u in urns if u in by_urn]
        resource.dependencies = [d for deps in resource.property_dependencies.values() for d in deps]
    return list(by_urn.values())


def evaluate(run: ProgramRun, policies: list | None = None) -> dict[str, list[Violation]]:
    """Run `policies` (default: the whole pack) on `run`; policy name -> its violations."""
    policies = load_rules().ALL_POLICIES if policies is None else policies
    verdicts: dict[str, list[Violation]] = {p.name: [] for p in policies}
    stack = None
    for policy in policies:

        def report(message: str, urn: str | None = None, _name=policy.name, _default=""):
            verdicts[_name].append(Violation(_name, urn or _default, message))

        if isinstance(policy, ResourceValidationPolicy):
            for resource in run.resources:
                if resource.custom:
                    policy.validate(resource_args(resource), lambda m, u=None, r=resource, f=report: f(m, u or r.urn))
        else:
            stack = stack if stack is not None else stack_resources(run)
            policy.validate(StackValidationArgs(stack, {}), report)
    return verdicts
