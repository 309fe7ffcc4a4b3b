"""The model repository: artifact manifests and verification, local and S3 stores, publishing.

Command: `runtime.repository.command` (`stratus publish`). Layout: docs/architecture.md.
"""
