"""Small helpers shared by the components: tags and child resource options."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

TAG_KEYS = ("project", "stack", "component")
"""Tags every taggable resource carries (checked by tests and the policy pack)."""


def base_tags() -> dict[str, str]:
    """The `project` and `stack` tags of the current Pulumi stack."""
    return {"project": pulumi.get_project(), "stack": pulumi.get_stack()}


def component_tags(base: Mapping[str, str], component: str, **extra: str) -> dict[str, str]:
    """`base` plus the `component` tag (and any `extra` tags such as `Name`)."""
    return {**base, "component": component, **extra}


def child(parent: pulumi.Resource, **kwargs) -> pulumi.ResourceOptions:
    """Options for a resource owned by the component `parent`."""
    return pulumi.ResourceOptions(parent=parent, **kwargs)
