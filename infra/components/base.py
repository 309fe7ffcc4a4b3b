"""Small helpers shared by the components: tags, child resource options, instance metadata."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

IMDSV2_ONLY = {
    "http_endpoint": "enabled",
    "http_tokens": "required",
    # Hop limit 1: a container or forwarded request on the node cannot reach the role's
    # credentials through IMDS.
    "http_put_response_hop_limit": 1,
}
"""Metadata options of every launch template (training nodes, serving hosts)."""


def base_tags() -> dict[str, str]:
    """The `project` and `stack` tags of the current Pulumi stack."""
    return {"project": pulumi.get_project(), "stack": pulumi.get_stack()}


def component_tags(base: Mapping[str, str], component: str, **extra: str) -> dict[str, str]:
    """`base` plus the `component` tag (and any `extra` tags such as `Name`)."""
    return {**base, "component": component, **extra}


def child(parent: pulumi.Resource, **kwargs) -> pulumi.ResourceOptions:
    """Options for a resource owned by the component `parent`."""
    return pulumi.ResourceOptions(parent=parent, **kwargs)
