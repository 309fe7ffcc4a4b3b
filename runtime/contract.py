"""The contract between the stack (`infra/`, `__main__.py`) and the runtime (`runtime/`).

Both sides import this module and nothing of each other (a test checks it). It holds the names
that a deployed stack and the code running on its hosts must agree on, and the exit-code table
that every `stratus` command follows. See docs/architecture.md, "The contract with the stack".

Pure constants and a few tiny functions: importing it costs nothing and pulls in no dependency.
"""

from __future__ import annotations

import re
from enum import IntEnum

# --- stack outputs --------------------------------------------------------------------------------
# `pulumi stack output --json` of a stratus stack; `scripts/launch.sh --stack` and
# `runtime.remote` read them. Renaming one breaks every deployed stack's operators.

OUTPUT_REGION = "region"
OUTPUT_KMS_KEY_ARN = "kms_key_arn"
OUTPUT_DATASETS_BUCKET = "datasets_bucket"
OUTPUT_CHECKPOINTS_BUCKET = "checkpoints_bucket"
OUTPUT_MODELS_BUCKET = "models_bucket"
OUTPUT_LOGS_BUCKET = "logs_bucket"
OUTPUT_TRAINER_INSTANCE_IDS = "trainer_instance_ids"
"""Always `[]` since the nodes are an Auto Scaling group (issue 21): a group's members are not
known at `pulumi up` and change when a node is replaced; list them from
`OUTPUT_TRAINER_AUTOSCALING_GROUP`. Kept so that readers of older stacks keep working."""
OUTPUT_TRAINER_PRIVATE_IPS = "trainer_private_ips"
"""Always `[]`, like `OUTPUT_TRAINER_INSTANCE_IDS`."""
OUTPUT_TRAINER_SLOTS_PER_NODE = "trainer_slots_per_node"
OUTPUT_SERVING_INSTANCE_ID = "serving_instance_id"
OUTPUT_SERVING_PRIVATE_IP = "serving_private_ip"
OUTPUT_SERVING_URL = "serving_url"
OUTPUT_SERVING_GRPC_TARGET = "serving_grpc_target"
"""`<private ip>:<port>` of the server's gRPC endpoint; null when `serving-grpc-port` is 0."""
OUTPUT_SERVING_TOKEN_PARAMETER = "serving_token_parameter"  # noqa: S105 (an output name, not a secret)
OUTPUT_ESTIMATED_HOURLY_USD = "estimated_hourly_usd"
OUTPUT_TRAINER_AUTOSCALING_GROUP = "trainer_autoscaling_group"
"""Name of the training nodes' EC2 Auto Scaling group: the launcher reads the live instance ids and
private IPs from it at launch time (a replaced node has a new id and address)."""
OUTPUT_TRAINER_CAPACITY_BLOCK_END = "trainer_capacity_block_end"
"""ISO-8601 end of the training nodes' Capacity Block (e.g. `2026-12-10T11:30:00Z`); null or absent
without one. `stratus remote` prints it and launches nothing with less than 35 minutes left (EC2
starts terminating the block's instances 30 minutes before its end)."""
OUTPUT_EGRESS_ENABLED = "egress_enabled"
"""True when the stack's private subnets route to the internet (NAT); False: hosts reach only the
VPC endpoints, so a launch must name a wheelhouse (`stratus wheels`, `--wheels`; `WHEELHOUSE_PREFIX`)."""
OUTPUT_SERVING_CA_CERTIFICATE = "serving_ca_certificate"
"""The stack CA's certificate (PEM): `curl --cacert`, tritonclient `ssl=True` with this CA."""
OUTPUT_SERVING_TLS_CERT_PARAMETER = "serving_tls_cert_parameter"
"""SSM parameter name of the server certificate (`stratus serve --tls-cert-ssm-parameter`)."""
OUTPUT_SERVING_TLS_KEY_PARAMETER = "serving_tls_key_parameter"
"""SSM parameter name of the server key, a SecureString (`stratus serve --tls-key-ssm-parameter`)."""
OUTPUT_SERVING_AUTOSCALING_GROUP = "serving_autoscaling_group"
"""Name of the serving hosts' Auto Scaling group (list its instances, start a refresh)."""

BUCKET_PURPOSES = ("datasets", "checkpoints", "models", "logs")
"""The stack's buckets; each is exported as `<purpose>_bucket`."""

STACK_OUTPUTS = (
    OUTPUT_REGION,
    OUTPUT_KMS_KEY_ARN,
    *(f"{purpose}_bucket" for purpose in BUCKET_PURPOSES),
    OUTPUT_TRAINER_INSTANCE_IDS,
    OUTPUT_TRAINER_PRIVATE_IPS,
    OUTPUT_TRAINER_SLOTS_PER_NODE,
    OUTPUT_SERVING_INSTANCE_ID,
    OUTPUT_SERVING_PRIVATE_IP,
    OUTPUT_SERVING_URL,
    OUTPUT_SERVING_GRPC_TARGET,
    OUTPUT_SERVING_TOKEN_PARAMETER,
    OUTPUT_ESTIMATED_HOURLY_USD,
    OUTPUT_TRAINER_AUTOSCALING_GROUP,
    OUTPUT_EGRESS_ENABLED,
    OUTPUT_SERVING_CA_CERTIFICATE,
    OUTPUT_SERVING_TLS_CERT_PARAMETER,
    OUTPUT_SERVING_TLS_KEY_PARAMETER,
    OUTPUT_SERVING_AUTOSCALING_GROUP,
    OUTPUT_TRAINER_CAPACITY_BLOCK_END,
)
"""Every output the program exports, in the order it exports them."""

REMOTE_TRAINING_OUTPUTS = (
    OUTPUT_REGION,
    OUTPUT_KMS_KEY_ARN,
    OUTPUT_DATASETS_BUCKET,
    OUTPUT_CHECKPOINTS_BUCKET,
    OUTPUT_MODELS_BUCKET,
    OUTPUT_TRAINER_INSTANCE_IDS,
    OUTPUT_TRAINER_PRIVATE_IPS,
    OUTPUT_TRAINER_SLOTS_PER_NODE,
)
"""The outputs a remote training launch needs; the first five are plain strings."""

# --- bucket layout --------------------------------------------------------------------------------

MODELS_PREFIX = "models/"
"""Prefix of the model repository in the models bucket (`s3://<models_bucket>/models`)."""
RUNTIME_PREFIX = "runtime/"
"""Prefix of the runtime bundle in the models bucket, read by trainers and the serving host."""
BUNDLE_NAME = "stratus-runtime.tar.gz"
"""File name of the runtime bundle (a tarball of `runtime/`, `requirements/runtime.txt` and, with
a wheelhouse, its manifest `WHEELS_MANIFEST`)."""
BUNDLE_KEY = f"{RUNTIME_PREFIX}{BUNDLE_NAME}"
"""Key of the runtime bundle in the models bucket; the hosts' user data fetches exactly this."""
WHEELHOUSE_PREFIX = f"{RUNTIME_PREFIX}wheelhouse/"
"""Prefix of the wheelhouses in the models bucket: each a plain tar of `*.whl`, named by its sha256
(`wheelhouse_key`), uploaded once and fetched by a host only when it (re)builds its venv. Under
`RUNTIME_PREFIX`, so the hosts' read of the runtime covers it and nothing else is granted."""
WHEELS_MANIFEST = "wheels.json"
"""The bundle's manifest of its wheelhouse: `uri`, `sha256`, `size` (bytes) and `wheels` (the
sorted file names); absent from a bundle without one (the hosts install from the package index)."""
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def wheelhouse_key(sha256: str) -> str:
    """Key of the wheelhouse tar whose sha256 (64 lower-case hex digits) is `sha256`.

    Raises:
        ValueError: `sha256` is not a sha256 hex digest.
    """
    if not _SHA256_RE.match(sha256):
        raise ValueError(f"wheelhouse_key({sha256!r}): give a sha256 hex digest (64 lower-case hex digits)")
    return f"{WHEELHOUSE_PREFIX}{sha256}.tar"


def bundle_uri(models_bucket: str) -> str:
    """S3 URI of the runtime bundle in the models bucket."""
    return f"s3://{models_bucket}/{BUNDLE_KEY}"


ENV_BUNDLE_URI = "STRATUS_BUNDLE_URI"
"""Host environment variable holding `bundle_uri(...)`: the user data writes it into the stack env
file, `stratus-prepare.service` (`infra/builders/host/prepare.sh`, and the simulated prepare of
`sim.stack`) fetches the bundle from it."""


def checkpoints_prefix(run: str) -> str:
    """Key prefix of a run's checkpoints in the checkpoints bucket (`<run>/`)."""
    return f"{run}/"


def checkpoints_uri(checkpoints_bucket: str, run: str) -> str:
    """S3 URI of a run's checkpoints (`s3://<checkpoints_bucket>/<run>/`), ending in "/".

    The one place that spells it: the launch, the nodes' streaming and sync, and node 0's export
    all name a run's checkpoints with this (or its key prefix, `checkpoints_prefix`).
    """
    return f"s3://{checkpoints_bucket}/{checkpoints_prefix(run)}"


def model_repository_uri(models_bucket: str) -> str:
    """S3 URI of the model repository that `publish` writes and the serving host reads."""
    return f"s3://{models_bucket}/{MODELS_PREFIX.rstrip('/')}"


# --- paths on the hosts ---------------------------------------------------------------------------

APP_DIR = "/opt/stratus"
"""Where the hosts unpack the bundle (`<APP_DIR>/app`) and build the venv (`<APP_DIR>/venv`)."""
HOST_PYTHON = f"{APP_DIR}/venv/bin/python"
"""The interpreter of the runtime venv on every host."""
HOST_BUNDLE = f"{APP_DIR}/bundle.tar.gz"
"""Where the hosts keep the downloaded bundle (its sha256 is checked before each launch)."""
HOST_TORCH_EXTENSIONS = f"{APP_DIR}/torch-extensions"
"""`TORCH_EXTENSIONS_DIR` of the hosts: DeepSpeed's ops, compiled there by `stratus-prepare.service`
(`runtime.remote.ops`) and found there, built, by the training runs."""
HOST_OPS_ENV = f"{APP_DIR}/ops.env"
"""`CUDA_HOME` (and `TORCH_EXTENSIONS_DIR`) the ops were built with, written at prepare; the node
command sources it so that torch's extension loader sees the same build and rebuilds nothing."""
SCRATCH_MOUNT = "/scratch"
"""Mount point of a training node's scratch volume."""
NODE_OUTPUT_DIR = f"{SCRATCH_MOUNT}/runs"
"""`output_dir` of training on the nodes (the scratch volume)."""
PREPARE_UNIT = "stratus-prepare.service"
"""The systemd oneshot that installs the bundle on a host."""
NODE_ENV_FILE = "/etc/stratus/node.env"
"""NCCL/EFA settings of a training node's instance type (KEY=value lines, shell-quoted), written by
the node's user data; the launch command exports them before starting DeepSpeed, and the runtime's
node knobs (`runtime.common.nodeenv.NodeEnv`) are read from it and the process environment."""

# --- model repository -----------------------------------------------------------------------------

MODEL_FILE = "model.onnx"
"""The model file of an artifact version directory."""

MODEL_NAME_MAX_CHARS = 64
MODEL_NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MODEL_NAME_MAX_CHARS - 1}}}$")
"""A model name lands in a directory, an S3 key, a URL path and a systemd unit line: a
conservative charset keeps all of them safe."""


def model_name_problem(name: object) -> str | None:
    """None if `name` is a valid model name, else what is wrong and how to fix it."""
    if isinstance(name, str) and MODEL_NAME_RE.match(name) and ".." not in name:
        return None
    return (
        f"model name {name!r} is invalid: use letters, digits, '_', '-', '.' (start with a letter or "
        f"digit, no '..', at most {MODEL_NAME_MAX_CHARS} characters), e.g. mlp-binary"
    )


# --- exit codes -----------------------------------------------------------------------------------


class ExitCode(IntEnum):
    """One meaning per code, across every `stratus` command (docs/architecture.md, "Exit codes")."""

    OK = 0
    """The command did what was asked."""
    FAILED = 1
    """An operation failed that is not the input's fault (a node, an upload, a sync); the message names it."""
    BAD_INPUT = 2
    """Bad arguments, config, data, artifact or stack outputs; the message names what to change."""
    NO_CHECKPOINT = 3
    """No checkpoint verifies where one is needed (`--resume`, export)."""
    GATE_FAILED = 4
    """The exported model lost more than the tolerance allows; nothing was written or published."""
    PREEMPTED = 75
    """Stopped by SIGTERM/SIGINT after committing a checkpoint (EX_TEMPFAIL): rerun with `--resume`."""
    INTERRUPTED = 130
    """Interrupted by the operator before the work finished (remote: the nodes keep running)."""


COMMAND_EXIT_CODES: dict[str, tuple[ExitCode, ...]] = {
    "train": (ExitCode.OK, ExitCode.BAD_INPUT, ExitCode.NO_CHECKPOINT, ExitCode.PREEMPTED),
    "export": (ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT, ExitCode.NO_CHECKPOINT, ExitCode.GATE_FAILED),
    "publish": (ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT),
    "serve": (ExitCode.OK, ExitCode.BAD_INPUT),
    "remote": (ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT, ExitCode.PREEMPTED, ExitCode.INTERRUPTED),
    "sync": (ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT),
    "plan": (ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT),
    "model": (ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT),
    "wheels": (ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT),
}
"""Which codes each command can return; docs/architecture.md prints this table and a test runs
every pair."""
