"""`stratus publish`: publish an exported version directory into a model repository.

    stratus publish --artifact runs/mlp-binary/export --repo runs/model-repo --model mlp-binary
    stratus publish --artifact DIR --repo s3://<models_bucket>/models --model mlp-binary \\
        --kms-key-id <kms_key_arn>

Writes `<repo>/<model>/<N>/` (model.onnx + manifest.json), verifies what landed, then `LATEST`;
a failed publish leaves `LATEST` on the previous version (runtime.repository.publish).
Exit codes (docs/architecture.md): 0 published; 1 uploading or verifying what landed failed;
2 bad arguments, model name, repository URI, or an artifact that does not verify.
(`python -m runtime publish ...` is the same command without the console script.)
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from runtime.common.options import option, parse_options
from runtime.contract import ExitCode
from runtime.repository.artifact import ArtifactError
from runtime.repository.publish import publish
from runtime.repository.store import PublishError


@dataclass(kw_only=True)
class PublishOptions:
    """The options of `stratus publish`."""

    artifact: str = option(metavar="DIR")
    """Exported version directory to publish (model.onnx + manifest.json that verify)."""

    repo: str = option(metavar="REPO")
    """Model repository: a local directory or s3://bucket/prefix."""

    model: str = option(metavar="NAME")
    """Model name in the repository."""

    kms_key_id: str | None = option(None, metavar="KEY")
    """KMS key id/ARN for SSE-KMS uploads to S3 (the stack output kms_key_arn)."""


def main(argv: list[str] | None = None) -> int:
    """Entry of `stratus publish`; returns an `ExitCode` (see the module docstring)."""
    opts = parse_options(PublishOptions, argv, prog="stratus publish", description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        version = publish(opts.artifact, opts.repo, model_name=opts.model, kms_key_id=opts.kms_key_id)
    except PublishError as e:
        print(f"publish failed: {e}", file=sys.stderr)
        return ExitCode.FAILED
    except (ArtifactError, ValueError) as e:
        print(f"publish refused: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    print(f"published {opts.model} version {version} to {opts.repo}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
