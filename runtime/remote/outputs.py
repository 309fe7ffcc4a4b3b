"""The stack outputs a remote launch needs: read from `pulumi stack output --json` or a file, checked.

Names and meaning are fixed in `runtime.contract`; nothing here calls AWS.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from runtime.contract import (
    OUTPUT_EGRESS_ENABLED,
    OUTPUT_TRAINER_AUTOSCALING_GROUP,
    OUTPUT_TRAINER_CAPACITY_BLOCK_END,
    OUTPUT_TRAINER_INSTANCE_IDS,
    OUTPUT_TRAINER_PRIVATE_IPS,
    REMOTE_TRAINING_OUTPUTS,
)


class RemoteError(RuntimeError):
    """A stack, input or node problem; the message names what to change."""


@dataclass(frozen=True, kw_only=True)
class StackOutputs:
    """The stack outputs that a remote training launch needs (names fixed in ARCHITECTURE.md)."""

    region: str
    """AWS region of the stack; every client is created there."""
    kms_key_arn: str
    """The stack key; every upload names it (SSE-KMS), or the bucket policies refuse it."""
    datasets_bucket: str
    """Bucket that local training data is uploaded to, under `<run>/`."""
    checkpoints_bucket: str
    """Bucket that node 0 syncs committed checkpoints to, under `<run>/`."""
    models_bucket: str
    """Bucket holding the runtime bundle at `runtime/stratus-runtime.tar.gz`."""
    instance_ids: tuple[str, ...]
    """Training node instance ids; position i is node rank i. Empty for a stack with
    `autoscaling_group` until `runtime.remote.fleet.discover` lists the group's members."""
    private_ips: tuple[str, ...]
    """Private IPs of the training nodes, same order; the first is the rendezvous (master) address."""
    slots_per_node: int
    """GPUs per node: one DeepSpeed rank each."""
    egress_enabled: bool | None = None
    """Whether the nodes reach the internet (`egress_enabled`); None: the stack does not say (older)."""
    autoscaling_group: str | None = None
    """The training nodes' Auto Scaling group (`trainer_autoscaling_group`): the nodes are its
    members at launch time, not the frozen ids; None for an older stack of fixed instances."""
    capacity_block_end: datetime | None = None
    """End of the nodes' Capacity Block (`trainer_capacity_block_end`, timezone-aware); None without one."""

    @property
    def num_nodes(self) -> int:
        return len(self.instance_ids)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.slots_per_node


def parse_outputs(data: object, source: str) -> StackOutputs:
    """Check and convert `pulumi stack output --json` data.

    Raises:
        RemoteError: naming each missing or malformed output and `pulumi up`.
    """
    if not isinstance(data, dict):
        raise RemoteError(f"{source}: expected a JSON object of stack outputs (`pulumi stack output --json`)")
    group = data.get(OUTPUT_TRAINER_AUTOSCALING_GROUP)
    if group is not None and (not isinstance(group, str) or not group):
        raise RemoteError(f"{source}: output {OUTPUT_TRAINER_AUTOSCALING_GROUP} is {group!r}, expected a group name")
    # A group's members are listed at launch time: its stack exports no (or empty) frozen node lists.
    frozen = (OUTPUT_TRAINER_INSTANCE_IDS, OUTPUT_TRAINER_PRIVATE_IPS)
    required = [k for k in REMOTE_TRAINING_OUTPUTS if not (group and k in frozen)]
    missing = [k for k in required if data.get(k) in (None, "", [])]
    if missing:
        raise RemoteError(
            f"{source} lacks the stack output(s) {', '.join(missing)}; run `pulumi up` on the stack "
            "(a stack from an older stratus version or without training nodes does not export them)"
        )
    secret = [k for k in required if data[k] == "[secret]"]
    if secret:
        raise RemoteError(f"{source}: output(s) {', '.join(secret)} are secret; they must be plain outputs")
    for k in REMOTE_TRAINING_OUTPUTS[:5]:
        if not isinstance(data[k], str):
            raise RemoteError(f"{source}: output {k} is {data[k]!r}, expected a string; run `pulumi up`")
    slots = data["trainer_slots_per_node"]
    ids, ips = data.get(OUTPUT_TRAINER_INSTANCE_IDS) or [], data.get(OUTPUT_TRAINER_PRIVATE_IPS) or []
    for k, v in (("trainer_instance_ids", ids), ("trainer_private_ips", ips)):
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise RemoteError(f"{source}: output {k} is {v!r}, expected a list of strings; run `pulumi up`")
    if len(ids) != len(ips):
        raise RemoteError(
            f"{source}: {len(ids)} trainer_instance_ids but {len(ips)} trainer_private_ips; "
            "run `pulumi refresh` then `pulumi up`"
        )
    if len(set(ids)) != len(ids) or len(set(ips)) != len(ips):
        raise RemoteError(f"{source}: trainer_instance_ids/trainer_private_ips hold duplicates; run `pulumi up`")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise RemoteError(
            f"{source}: output trainer_slots_per_node is {slots!r}; it must be a positive integer "
            "(a trainer-instance-type with GPUs)"
        )
    egress = data.get(OUTPUT_EGRESS_ENABLED)
    if egress is not None and not isinstance(egress, bool):
        raise RemoteError(
            f"{source}: output {OUTPUT_EGRESS_ENABLED} is {egress!r}, expected true or false; run `pulumi up`"
        )
    return StackOutputs(
        autoscaling_group=group,
        capacity_block_end=_block_end(data.get(OUTPUT_TRAINER_CAPACITY_BLOCK_END), source),
        region=data["region"],
        kms_key_arn=data["kms_key_arn"],
        datasets_bucket=data["datasets_bucket"],
        checkpoints_bucket=data["checkpoints_bucket"],
        models_bucket=data["models_bucket"],
        instance_ids=tuple(ids),
        private_ips=tuple(ips),
        slots_per_node=slots,
        egress_enabled=egress,
    )


def _block_end(value: object, source: str) -> datetime | None:
    if value is None:
        return None
    try:
        end = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        end = None
    if end is None or end.tzinfo is None:
        raise RemoteError(
            f"{source}: output {OUTPUT_TRAINER_CAPACITY_BLOCK_END} is {value!r}, expected an ISO-8601 time with "
            "its zone, e.g. 2026-12-10T11:30:00Z; run `pulumi up`"
        )
    return end


def read_outputs(*, stack: str | None = None, outputs_file: str | Path | None = None) -> StackOutputs:
    """Stack outputs from `--outputs-file` (that JSON) or from `pulumi stack output --stack NAME`.

    Raises:
        RemoteError: unreadable file, no Pulumi CLI, a failing `pulumi`, or bad outputs.
    """
    if outputs_file is not None:
        try:
            data = json.loads(Path(outputs_file).read_text())
        except OSError as e:
            raise RemoteError(f"--outputs-file {outputs_file}: cannot read it ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise RemoteError(
                f"--outputs-file {outputs_file}: not JSON ({e}); write it with "
                "`pulumi stack output --json --stack NAME > FILE`"
            ) from None
        return parse_outputs(data, f"--outputs-file {outputs_file}")
    if not stack:
        raise RemoteError("name the stack: --stack NAME (or --outputs-file FILE)")
    cmd = ["pulumi", "stack", "output", "--json", "--show-secrets=false", "--stack", stack]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise RemoteError(
            "the Pulumi CLI is not installed (https://www.pulumi.com/docs/install/); install it, or pass "
            "--outputs-file FILE written elsewhere with `pulumi stack output --json --stack NAME > FILE`"
        ) from None
    if result.returncode != 0:
        raise RemoteError(f"`{shlex.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError as e:
        raise RemoteError(f"`{shlex.join(cmd)}` printed no JSON ({e})") from None
    return parse_outputs(data, f"stack {stack}")
