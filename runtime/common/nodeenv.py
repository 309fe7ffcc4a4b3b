"""The node environment: every knob a training node's processes read, parsed once into `NodeEnv`.

Sources, later ones winning: the defaults below, `/etc/stratus/node.env` (`KEY=value` lines,
shell-quoted, written by the node's user data; `runtime.contract.NODE_ENV_FILE`), then the process
environment (the node script exports the launch's checkpoint target; an operator may export any
knob). docs/operations.md, "The node environment", lists them. Product code reads the knobs from
the `NodeEnv` it is handed (or `node_env()`, parsed once per process), never from `os.environ`.

    env = node_env()                              # this process's, parsed on first use
    env.dist_timeout_s, env.checkpoint_uri        # typed, with their defaults
    NodeEnv(checkpoint_uri=..., node_rank=1).exports(LAUNCH_FIELDS)   # {"STRATUS_...": "..."}
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.contract import NODE_ENV_FILE


def _knob(default: Any, env: str) -> Any:
    return field(default=default, metadata={"env": env})


@dataclass(frozen=True, kw_only=True)
class NodeEnv:
    """The knobs of a training node (each field's variable is in its metadata, `env_name`)."""

    dist_timeout_s: float = _knob(300.0, "STRATUS_DIST_TIMEOUT_S")
    """Seconds before a collective fails when a rank died or hangs (process-group timeout)."""
    upload_budget_s: float = _knob(2.0, "STRATUS_UPLOAD_BUDGET_S")
    """Seconds a step may wait for room in the checkpoint upload queue."""
    upload_wait_s: float = _knob(600.0, "STRATUS_UPLOAD_WAIT_S")
    """Seconds node 0's streamer waits for the other nodes' parts of a checkpoint."""
    min_bus_gbps: float = _knob(0.0, "STRATUS_MIN_BUS_GBPS")
    """All-reduce bus bandwidth floor of the preflight (GB/s; 0: only log the figure). node.env of
    an EFA type sets one (infra.builders.userdata.efa_floor_gbps); `stratus remote --min-bus-gbps`
    overrides it."""
    preflight_mib: int = _knob(8, "STRATUS_PREFLIGHT_MIB")
    """Size of the preflight's all-reduce (MiB); 256 on EFA types, to measure bandwidth, not latency."""
    fabric: str = _knob("", "STRATUS_FABRIC")
    """`efa` on EFA types: the preflight fails when NCCL did not pick the aws-ofi-nccl network over
    libfabric's EFA provider (read from NCCL's INIT,NET log, `NCCL_DEBUG_FILE`)."""
    imds_endpoint: str = _knob("http://169.254.169.254", "STRATUS_IMDS_ENDPOINT")
    """Instance metadata service the spot-interruption watcher polls."""
    checkpoint_uri: str = _knob("", "STRATUS_CHECKPOINT_S3")
    """`contract.checkpoints_uri(bucket, run)`: where this node streams checkpoints; empty: local run."""
    kms_key_arn: str = _knob("", "STRATUS_KMS_KEY_ARN")
    """The stack key; every checkpoint object is written with SSE-KMS under it."""
    node_rank: int = _knob(0, "STRATUS_NODE_RANK")
    """This node's rank in the launch (0 merges manifests and writes `latest`)."""
    num_nodes: int = _knob(1, "STRATUS_NUM_NODES")
    """Nodes in the launch."""
    launch_id: str = _knob("", "STRATUS_LAUNCH_ID")
    """Id of the launch; node 0 merges only the parts that carry it."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], *, source: str = "the environment") -> NodeEnv:
        """The knobs named in `values` (variable names; others are ignored), the rest default.

        Raises:
            ValueError: a value that does not parse, naming the variable and `source`.
        """
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = values.get(env_name(f.name))
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            try:
                kwargs[f.name] = kind(raw)
            except ValueError:
                raise ValueError(
                    f"{env_name(f.name)}={raw!r} in {source}: not a {kind.__name__} (default {f.default!r})"
                ) from None
        return cls(**kwargs)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, path: Path | str = NODE_ENV_FILE) -> NodeEnv:
        """Parse `path` (absent: nothing) with `environ` (default: the process's) over it."""
        values = read_env_file(Path(path))
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values, source=f"{path} or the process environment")

    def exports(self, names: Sequence[str]) -> dict[str, str]:
        """`{variable: value}` of the fields `names`: what a node script exports for them."""
        return {env_name(name): str(getattr(self, name)) for name in names}


LAUNCH_FIELDS = ("checkpoint_uri", "kms_key_arn", "node_rank", "num_nodes", "launch_id")
"""The knobs the node script sets per launch (the rest come from node.env or their defaults)."""


def env_name(field_name: str) -> str:
    """The environment variable of a `NodeEnv` field, e.g. `STRATUS_DIST_TIMEOUT_S`."""
    return NodeEnv.__dataclass_fields__[field_name].metadata["env"]


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines of a shell env file (values shell-quoted; blank and # lines skipped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError as e:  # an unbalanced quote: the shell could not source it either
            raise ValueError(f"{path}:{number}: {key}=...: {e}") from None
        values[key.removeprefix("export ").strip()] = " ".join(words)
    return values


@functools.cache
def node_env() -> NodeEnv:
    """This process's node environment, parsed once (`NodeEnv.load()`)."""
    return NodeEnv.load()
