"""Pulumi components and pure helpers of the stratus AWS stack (see ARCHITECTURE.md)."""
