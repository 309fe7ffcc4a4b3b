"""Pulumi components of the stack, one `pulumi.ComponentResource` per module."""
