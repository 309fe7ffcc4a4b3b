"""Serving: the authenticated Open Inference Protocol server with verified hot reload.

One data plane (`dataplane`: model lookup, readiness, auth, inference, metrics, extensions by
name) behind thin protocol adapters (`app`: HTTP/ASGI; `grpc_service`: gRPC).
Command: `runtime.serve.command` (`stratus serve`). Runbook: docs/operations.md.
"""
