"""Serving: the authenticated Open Inference Protocol server with verified hot reload.

Command: `runtime.serve.command` (`stratus serve`). Runbook: docs/operations.md.
"""
