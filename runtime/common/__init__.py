"""Pieces every stage uses: the rank-aware logger, durable files, S3 helpers, flags from dataclasses,
the node environment (`nodeenv`)."""
