"""`stratus model push|tiny`: put a Hugging Face model directory where training nodes can load it.

Runbook:
    # a small Llama-architecture model made here, offline (tests, benchmarks, trying the path)
    stratus model tiny /tmp/tiny-llama --steps 200
    # upload a local directory to the stack's datasets bucket (SSE-KMS under the stack key); prints
    # the s3:// URI to pass as --model-dir
    stratus model push /models/my-llama --stack dev
    stratus model push /models/my-llama --bucket my-bucket --kms-key-id alias/my-key --prefix models/llama
    stratus train --preset hf-1b-g5 --model-dir s3://<datasets bucket>/models/my-llama/ --data chat.jsonl

The directory is checked first (config.json, *.safetensors, tokenizer files; pickle weights are
refused) and `stratus-model.json` (sha256 and size of every file) is uploaded beside it, so every
rank that downloads the directory verifies each file before loading it.
Exit codes: 0 pushed/made; 1 an upload failed; 2 bad arguments, directory or stack outputs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.common.options import from_namespace, option, parser_for
from runtime.contract import ExitCode

PROG = "stratus model"


@dataclass(kw_only=True)
class PushOptions:
    """The options of `stratus model push DIR`."""

    stack: str | None = option(None, metavar="NAME")
    """Pulumi stack whose datasets bucket and KMS key receive the directory."""

    outputs_file: str | None = option(None, metavar="FILE")
    """The stack's outputs as JSON (`pulumi stack output --json`), in place of --stack."""

    bucket: str | None = option(None, metavar="BUCKET")
    """A bucket to upload to, in place of the stack's datasets bucket."""

    kms_key_id: str | None = option(None, metavar="KEY")
    """KMS key for SSE-KMS with --bucket (default: the stack's key, or the bucket's default)."""

    prefix: str | None = option(None, metavar="PREFIX")
    """Key prefix in the bucket (default: models/<directory name>)."""


@dataclass(kw_only=True)
class TinyOptions:
    """The options of `stratus model tiny DIR`."""

    steps: int = option(200, metavar="N")
    """Pre-training steps on the standard library's sources (0: random init)."""

    hidden: int = option(128, metavar="N")
    """Hidden width."""

    layers: int = option(4, metavar="N")
    """Decoder layers."""

    heads: int = option(4, metavar="N")
    """Attention heads (hidden must divide by it; key/value heads are half as many)."""


def _parse(cls: type, argv: list[str], name: str):
    parser = parser_for(cls, prog=f"{PROG} {name}", description=__doc__)
    parser.add_argument("dir", metavar="DIR", help="the model directory")
    namespace = parser.parse_args(argv)
    return from_namespace(cls, namespace), Path(namespace.dir)


def push(argv: list[str]) -> int:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    from runtime.remote.outputs import RemoteError, read_outputs
    from runtime.train.hf.modeldir import ModelDirError, upload_model_dir

    opts, root = _parse(PushOptions, argv, "push")
    try:
        bucket, key = opts.bucket, opts.kms_key_id
        if bucket is None:
            outputs = read_outputs(stack=opts.stack, outputs_file=opts.outputs_file)
            bucket, key = outputs.datasets_bucket, key or outputs.kms_key_arn
        uri = upload_model_dir(root, bucket, opts.prefix or f"models/{root.resolve().name}", key)
    except (ModelDirError, RemoteError) as e:
        print(f"push refused: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except (ClientError, BotoCoreError, S3UploadFailedError) as e:
        print(f"push failed: {e}; check the bucket, the key and the credentials", file=sys.stderr)
        return ExitCode.FAILED
    print(f"pushed {root} to {uri}\ntrain with: --model-dir {uri}")
    return ExitCode.OK


def tiny(argv: list[str]) -> int:
    from stratus.tinyllm import TinyLlama, make_tiny_llama

    opts, root = _parse(TinyOptions, argv, "tiny")
    if opts.hidden % opts.heads or opts.heads % 2:
        print(f"--hidden {opts.hidden} / --heads {opts.heads}: use an even head count dividing hidden", file=sys.stderr)
        return ExitCode.BAD_INPUT
    shape = TinyLlama(
        hidden=opts.hidden,
        layers=opts.layers,
        heads=opts.heads,
        kv_heads=opts.heads // 2,
        intermediate=round(opts.hidden * 8 / 3 / 8) * 8,
    )
    make_tiny_llama(root, shape, steps=opts.steps)
    return ExitCode.OK


SUBCOMMANDS = {"push": push, "tiny": tiny}


def main(argv: list[str] | None = None) -> int:
    """Entry of `stratus model`; returns an `ExitCode`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: {PROG} {{push,tiny}} DIR [options] (--help after one for its options)", file=sys.stderr)
        return ExitCode.OK if argv[:1] in (["-h"], ["--help"]) else ExitCode.BAD_INPUT
    return SUBCOMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
