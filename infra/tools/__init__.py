"""Offline tools: the Pulumi-mocks runner, the policy checker, and the plan CLI."""
