"""A small IAM policy evaluator for the trainer/server allow-deny matrix.

Implements the parts of AWS's evaluation logic the stack's documents use: explicit Deny wins,
then any Allow, else implicit deny; `Action`/`Resource`/`NotResource` with `*`/`?` wildcards; conditions
with StringEquals, StringLike, StringNotEquals, ArnLike, Bool and Null against a request context
(a missing key fails positive operators, as in AWS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

# The statement of the AWS managed policy AmazonSSMManagedInstanceCore that matters here:
# it allows ssm:GetParameter(s) on every parameter, which is why the trainer's token lock
# must not rely on the absence of an SSM allow.
SSM_CORE_PARAMETER_STATEMENT = {
    "Effect": "Allow",
    "Action": ["ssm:GetParameter", "ssm:GetParameters"],
    "Resource": "*",
}


def _as_list(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _match(patterns, value: str, *, case_insensitive: bool = False) -> bool:
    if case_insensitive:
        return any(fnmatchcase(value.lower(), p.lower()) for p in _as_list(patterns))
    return any(fnmatchcase(value, p) for p in _as_list(patterns))


def _conditions_hold(condition: Mapping | None, context: Mapping[str, str]) -> bool:
    for operator, tests in (condition or {}).items():
        for key, expected in tests.items():
            actual = context.get(key)
            expected_values = [str(v) for v in _as_list(expected)]
            if operator == "Null":
                if (actual is None) != (expected_values == ["true"]):
                    return False
                continue
            if operator == "StringNotEquals":
                if actual is not None and actual in expected_values:
                    return False
                continue
            if actual is None:
                return False
            if operator in ("StringEquals", "Bool"):
                ok = actual in expected_values
            elif operator in ("StringLike", "ArnLike"):
                ok = _match(expected_values, actual)
            else:
                raise NotImplementedError(f"condition operator {operator}")
            if not ok:
                return False
    return True


def _applies(statement: Mapping, action: str, resource: str, context: Mapping[str, str]) -> bool:
    if "NotResource" in statement:
        resource_matches = not _match(statement["NotResource"], resource)
    else:
        resource_matches = _match(statement["Resource"], resource)
    return (
        _match(statement["Action"], action, case_insensitive=True)
        and resource_matches
        and _conditions_hold(statement.get("Condition"), context)
    )


def is_allowed(
    statements: Iterable[Mapping],
    action: str,
    resource: str,
    context: Mapping[str, str] | None = None,
) -> bool:
    """Whether the identity policies `statements` allow `action` on `resource`."""
    context = context or {}
    statements = list(statements)
    if any(s["Effect"] == "Deny" and _applies(s, action, resource, context) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and _applies(s, action, resource, context) for s in statements)
