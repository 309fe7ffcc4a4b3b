"""Helpers shared by the stratus policy rules: safe property access, IAM documents, joins.

During `pulumi preview` a property computed from another resource (an ARN, a generated name)
is unknown, and reading it through the pulumi-policy proxy raises `UnknownValueError`. `get`
returns `UNKNOWN` instead, so a rule can treat "set from another resource" as set and leave
values it cannot see yet to the check that runs again during `pulumi up`.

This module is self-contained (stdlib + pulumi_policy): the pack runs with `policy/` as its
working directory, without the rest of the repository on the path.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pulumi_policy.proxy import UnknownValueError

UNKNOWN = type("Unknown", (), {"__repr__": lambda self: "<unknown during preview>"})()
"""Marker for a property whose value is not known yet (preview)."""
REQUIRED_TAGS = ("project", "stack", "component")
OPEN_CIDRS = ("0.0.0.0/0", "::/0")

KMS_KEY = "aws:kms/key:Key"
BUCKET = "aws:s3/bucket:Bucket"
INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"


def get(props: Any, *path: Any, default: Any = None) -> Any:
    """`props[path[0]][path[1]]...`; `default` when missing, `UNKNOWN` when not known yet."""
    value = props
    try:
        for key in path:
            if value is None:
                return default
            value = value[key]
    except UnknownValueError:
        return UNKNOWN
    except (KeyError, IndexError, TypeError):
        return default
    return default if value is None else value


def items(props: Any, *path: Any) -> list:
    """The list at `path` as a plain list (empty when missing or unknown)."""
    value = get(props, *path, default=[])
    if value is UNKNOWN or not isinstance(value, Iterable) or isinstance(value, str | Mapping):
        return []
    out = []
    for i in range(len(value)):  # index access keeps the unknown check of the proxy
        out.append(get(value, i))
    return out


def as_list(value: Any) -> list:
    """Wrap a scalar in a list; lists pass through."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def document(props: Any, key: str) -> dict | Any | None:
    """A JSON policy document property, parsed; `UNKNOWN` while not known; None when absent."""
    value = get(props, key)
    if value is None or value is UNKNOWN:
        return value
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return json.loads(json.dumps(_plain(value)))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(get(value, k)) for k in value}
    if isinstance(value, list | tuple) or (isinstance(value, Iterable) and not isinstance(value, str)):
        return [_plain(v) for v in value]
    return value


def statements(doc: Any) -> list[dict]:
    """Statements of a parsed policy document (none when unknown or absent)."""
    if not isinstance(doc, dict):
        return []
    return [s for s in as_list(doc.get("Statement")) if isinstance(s, dict)]


def wildcard_actions(statement: Mapping) -> list[str]:
    """Actions of an Allow statement that use `*` (or any NotAction, which allows the rest)."""
    if statement.get("Effect") != "Allow":
        return []
    if "NotAction" in statement:
        return ["NotAction"]
    return [a for a in as_list(statement.get("Action")) if isinstance(a, str) and "*" in a]


def public_principal(statement: Mapping) -> bool:
    """Whether an Allow statement grants to everyone (`*` or `{"AWS": "*"}`)."""
    if statement.get("Effect") != "Allow":
        return False
    principal = statement.get("Principal")
    if principal == "*":
        return True
    return isinstance(principal, Mapping) and "*" in as_list(principal.get("AWS"))


def is_open(cidr: Any) -> bool:
    """Whether a CIDR is the whole internet (any /0)."""
    if not isinstance(cidr, str):
        return False
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return cidr in OPEN_CIDRS


def depends_on(resource: Any, prop: str, resource_type: str) -> list:
    """Resources of `resource_type` that the property `prop` of `resource` was computed from."""
    deps = (getattr(resource, "property_dependencies", None) or {}).get(prop, [])
    return [d for d in deps if d.resource_type == resource_type]


def attached(resources: Iterable, resource_type: str, target: Any, prop: str = "bucket") -> list:
    """Resources of `resource_type` whose `prop` points at `target` (e.g. v7 bucket settings)."""
    return [
        r
        for r in resources
        if r.resource_type == resource_type
        and any(d.urn == target.urn for d in depends_on(r, prop, target.resource_type))
    ]


def of_type(resources: Iterable, resource_type: str) -> list:
    """Resources of one type."""
    return [r for r in resources if r.resource_type == resource_type]


def short_type(resource_type: str) -> str:
    """`aws:s3/bucket:Bucket` -> `aws.s3.Bucket`, the name users write in Python."""
    package, rest = resource_type.split(":", 1)
    module, cls = rest.split(":")
    module = module.split("/")[0]
    return f"{package}.{cls}" if module == "index" else f"{package}.{module}.{cls}"
