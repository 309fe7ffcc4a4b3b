"""Pure pieces of `runtime.remote`: stack outputs, DeepSpeed world info, the bundle, node commands.

Nothing here calls AWS; `runtime.remote` does, and tests call these directly.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import shlex
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.policies import RUNTIME_PREFIX
from infra.userdata import APP_DIR, BUNDLE_NAME, SCRATCH_MOUNT

REQUIRED_OUTPUTS = (
    "region",
    "kms_key_arn",
    "datasets_bucket",
    "checkpoints_bucket",
    "models_bucket",
    "trainer_instance_ids",
    "trainer_private_ips",
    "trainer_slots_per_node",
)
BUNDLE_KEY = f"{RUNTIME_PREFIX}{BUNDLE_NAME}"
"""Key of the runtime bundle in the models bucket; the hosts' user data fetches exactly this."""
NODE_OUTPUT_DIR = f"{SCRATCH_MOUNT}/runs"
"""`output_dir` of training on the nodes (the scratch volume)."""
NODE_PYTHON = f"{APP_DIR}/venv/bin/python"
BUNDLE_MTIME = 315532800  # 1980-01-01: fixed, so the same sources give the same bytes
_SKIP_PARTS = ("__pycache__",)


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
    """Training node instance ids; position i is node rank i."""
    private_ips: tuple[str, ...]
    """Private IPs of the training nodes, same order; the first is the rendezvous (master) address."""
    slots_per_node: int
    """GPUs per node: one DeepSpeed rank each."""

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
    missing = [k for k in REQUIRED_OUTPUTS if data.get(k) in (None, "", [])]
    if missing:
        raise RemoteError(
            f"{source} lacks the stack output(s) {', '.join(missing)}; run `pulumi up` on the stack "
            "(a stack from an older stratus version or without training nodes does not export them)"
        )
    secret = [k for k in REQUIRED_OUTPUTS if data[k] == "[secret]"]
    if secret:
        raise RemoteError(f"{source}: output(s) {', '.join(secret)} are secret; they must be plain outputs")
    for k in REQUIRED_OUTPUTS[:5]:
        if not isinstance(data[k], str):
            raise RemoteError(f"{source}: output {k} is {data[k]!r}, expected a string; run `pulumi up`")
    ids, ips, slots = data["trainer_instance_ids"], data["trainer_private_ips"], data["trainer_slots_per_node"]
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
    return StackOutputs(
        region=data["region"],
        kms_key_arn=data["kms_key_arn"],
        datasets_bucket=data["datasets_bucket"],
        checkpoints_bucket=data["checkpoints_bucket"],
        models_bucket=data["models_bucket"],
        instance_ids=tuple(ids),
        private_ips=tuple(ips),
        slots_per_node=slots,
    )


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


def encode_world_info(hosts: Sequence[str], slots_per_node: int) -> str:
    """DeepSpeed's `--world_info`: urlsafe base64 of the JSON `{host: [0, .., slots-1], ..}`.

    The same encoding as `deepspeed.launcher.runner.encode_world_info`. `deepspeed.launcher.launch`
    decodes it and takes key number `--node_rank` as its own node, so the key order is the node
    order and global ranks are numbered host by host in that order.
    """
    info = {host: list(range(slots_per_node)) for host in hosts}
    return base64.urlsafe_b64encode(json.dumps(info).encode("utf-8")).decode("utf-8")


# --- runtime bundle -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleEntry:
    name: str
    """Path inside the tarball."""
    source: Path
    """The local file."""
    size: int


def bundle_entries(root: Path, wheels: Path | None = None) -> list[BundleEntry]:
    """What goes into the bundle: `runtime/` (no caches or hidden files), `requirements.txt`, wheels.

    Raises:
        RemoteError: a missing source, or a symlink (it would unpack to something else on the node).
    """
    found: list[tuple[str, Path]] = []
    req = root / "requirements.txt"
    if not (root / "runtime").is_dir() or not req.is_file():
        raise RemoteError(f"{root}: needs runtime/ and requirements.txt to build the runtime bundle")
    found.append(("requirements.txt", req))
    for path in (root / "runtime").rglob("*"):
        rel = path.relative_to(root)
        if any(part in _SKIP_PARTS or part.startswith(".") for part in rel.parts) or path.suffix == ".pyc":
            continue
        if path.is_symlink():
            raise RemoteError(f"{path}: symlink in runtime/; replace it with a file")
        if path.is_file():
            found.append((rel.as_posix(), path))
    if wheels is not None:
        whls = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        if not whls:
            raise RemoteError(
                f"--wheels {wheels}: no .whl files there (fill it with `pip download -r requirements.txt`)"
            )
        found += [(f"wheels/{w.name}", w) for w in whls]
    return [BundleEntry(name, path, path.stat().st_size) for name, path in sorted(found)]


def write_bundle(entries: Sequence[BundleEntry], dest: Path) -> str:
    """Write a deterministic tar.gz (sorted entries, fixed mtime/owner/modes); return its sha256."""
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for e in sorted(entries, key=lambda e: e.name):
            info = tarfile.TarInfo(e.name)
            info.size, info.mtime, info.mode = e.size, BUNDLE_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(e.source, "rb") as f:
                tar.addfile(info, f)
    h = hashlib.sha256()
    with open(dest, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- per-node commands ----------------------------------------------------------------------------

# Every option of `python -m runtime train`; node_train_args rebuilds the command line from the
# parsed namespace, so an option added to train.py must be handled here (a test checks this list).
TRAIN_OPTIONS = ("preset", "config", "overrides", "run_name", "data", "resume", "nproc", "master_port", "dry_run",
                 "local_rank", "help")  # fmt: skip


def node_train_args(args: argparse.Namespace, *, data: str | None, config_path: str | None) -> list[str]:
    """`runtime.train` arguments for the nodes, from the operator's parsed arguments.

    `--nproc`/`--master-port`/`--dry-run` are dropped (the world comes from `--world_info`),
    `--config` points at `config_path` (written on the node), `--data` at `data` (an S3 URL
    or the builtin), and `output_dir` is the node's scratch volume.
    """
    out = ["--preset", args.preset]
    if config_path:
        out += ["--config", config_path]
    for override in args.overrides:
        out += ["--set", override]
    if args.run_name:
        out += ["--run-name", args.run_name]
    if data:
        out += ["--data", data]
    if args.resume:
        out.append("--resume")
    return [*out, "--set", f"output_dir={NODE_OUTPUT_DIR}"]


@dataclass(frozen=True, kw_only=True)
class NodeJob:
    """Everything that is the same on every node of one launch."""

    outputs: StackOutputs
    run_name: str
    train_args: tuple[str, ...]
    bundle_sha256: str
    launch_id: str
    master_port: int = 29500
    config_file: tuple[str, bytes] | None = None
    """(path on the node, content) of the operator's `--config` file, written there before training."""


def node_launch_command(job: NodeJob, node_rank: int) -> str:
    """The DeepSpeed per-node launcher command of node `node_rank` (what the brief of a node is)."""
    out = job.outputs
    launch = [
        NODE_PYTHON, "-m", "deepspeed.launcher.launch",
        f"--world_info={encode_world_info(out.private_ips, out.slots_per_node)}",
        f"--node_rank={node_rank}", f"--master_addr={out.private_ips[0]}", f"--master_port={job.master_port}",
        "--module", "runtime.train", *job.train_args,
    ]  # fmt: skip
    return f"cd {APP_DIR}/app && DS_ACCELERATOR=cuda {shlex.join(launch)}"


def node_script(job: NodeJob, node_rank: int) -> list[str]:
    """The `AWS-RunShellScript` lines for node `node_rank` (POSIX sh, run as root by SSM).

    Reinstalls the just-uploaded bundle (`stratus-prepare.service`), checks its sha256, trains
    through DeepSpeed's per-node launcher with the log on the scratch volume (the tail goes to
    SSM, whose output keeps only 24,000 characters), then syncs checkpoints whatever training's
    exit status was. Exits with training's status, else the sync's.
    """
    out = job.outputs
    q = shlex.quote
    run_dir = f"{NODE_OUTPUT_DIR}/{job.run_name}"
    node_log = f"{run_dir}/node{node_rank}.log"
    bundle = f"{APP_DIR}/bundle.tar.gz"
    sync = [
        NODE_PYTHON, "-m", "runtime.remote_sync", "--run-dir", run_dir, "--bucket", out.checkpoints_bucket,
        "--prefix", f"{job.run_name}/", "--kms-key-id", out.kms_key_arn, "--node-rank", str(node_rank),
        "--num-nodes", str(out.num_nodes), "--launch-id", job.launch_id,
    ]  # fmt: skip
    lines = [
        "set -u",
        f"export AWS_REGION={q(out.region)} AWS_DEFAULT_REGION={q(out.region)}",
        f"echo '[stratus] node {node_rank}/{out.num_nodes} ({out.private_ips[node_rank]}): installing the bundle'",
        "systemctl restart stratus-prepare.service || { echo '[stratus] installing the runtime bundle failed; "
        "see journalctl -u stratus-prepare' >&2; exit 1; }",
        f"echo {q(f'{job.bundle_sha256}  {bundle}')} | sha256sum -c --status - || {{ echo '[stratus] {bundle} is "
        "not the bundle this launch uploaded (another launch replaced it?)' >&2; exit 1; }",
        f"mkdir -p {q(run_dir)}",
    ]
    if job.config_file:
        path, content = job.config_file
        lines.append(f"echo {base64.b64encode(content).decode()} | base64 -d > {q(path)}")
    lines += [
        f"echo '[stratus] training; full log: {node_log}'",
        f"{node_launch_command(job, node_rank)} >> {q(node_log)} 2>&1",
        "rc=$?",
        f"tail -n 100 {q(node_log)}",
        f"{shlex.join(sync)}",
        "sync_rc=$?",
        f'echo "[stratus] node {node_rank}: training exit $rc, checkpoint sync exit $sync_rc"',
        'if [ "$rc" -ne 0 ]; then exit "$rc"; fi',
        'exit "$sync_rc"',
    ]
    return lines
