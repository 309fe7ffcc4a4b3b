"""What each training node runs: DeepSpeed's per-node launcher, then the checkpoint sync.

Pure functions of the stack outputs and the launch; `runtime.remote.command` sends the lines with
SSM Run Command (`AWS-RunShellScript`). Paths on the hosts come from `runtime.contract`.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from runtime.checkpoint.sync import SyncOptions
from runtime.common.nodeenv import LAUNCH_FIELDS, NodeEnv
from runtime.common.options import to_argv
from runtime.contract import (
    APP_DIR,
    HOST_BUNDLE,
    HOST_OPS_ENV,
    HOST_PYTHON,
    NODE_ENV_FILE,
    NODE_OUTPUT_DIR,
    PREPARE_UNIT,
    SCRATCH_MOUNT,
    checkpoints_prefix,
    checkpoints_uri,
)
from runtime.remote.outputs import StackOutputs
from runtime.remote.publish import PublishOptions
from runtime.train.command import TrainOptions, encode_world_info


def node_train_args(opts: TrainOptions, *, data: str | None, config_path: str | None) -> list[str]:
    """`stratus train` arguments for the nodes, rebuilt from the operator's parsed options.

    The same dataclass parses both command lines (`runtime.common.options.to_argv`), so an option
    added to `TrainOptions` reaches the nodes without being listed here. `--nproc`,
    `--master-port` and `--dry-run` are dropped (the world comes from `--world_info`), `--config`
    points at `config_path` (written on the node), `--data` at `data` (an S3 URL or the builtin),
    and `output_dir` is the node's scratch volume.
    """
    node = replace(opts, config=config_path, data=data)
    argv = to_argv(node, skip=("nproc", "master_port", "dry_run"))
    return [*argv, "--set", f"output_dir={NODE_OUTPUT_DIR}"]


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
    min_bus_gbps: float | None = None
    """The preflight's bus bandwidth floor for this launch (GB/s); None: the node type's default
    from node.env (`STRATUS_MIN_BUS_GBPS`)."""


def node_launch_command(job: NodeJob, node_rank: int) -> str:
    """The DeepSpeed per-node launcher command of node `node_rank` (what the brief of a node is)."""
    out = job.outputs
    launch = [
        HOST_PYTHON,
        "-m",
        "deepspeed.launcher.launch",
        f"--world_info={encode_world_info(out.private_ips, out.slots_per_node)}",
        f"--node_rank={node_rank}",
        f"--master_addr={out.private_ips[0]}",
        f"--master_port={job.master_port}",
        "--module",
        "runtime.train",
        *job.train_args,
    ]
    # The node's env file may name another accelerator (a simulated node: cpu).
    return f'cd {APP_DIR}/app && DS_ACCELERATOR="${{DS_ACCELERATOR:-cuda}}" {shlex.join(launch)}'


OPS_ENV_LINE = f"if [ -r {HOST_OPS_ENV} ]; then set -a; . {HOST_OPS_ENV}; set +a; fi"
"""Shell: export the build env of DeepSpeed's ops that prepare wrote (`HOST_OPS_ENV`), if any."""


def _preamble(out: StackOutputs) -> list[str]:
    """First lines of every node command: strict variables, the region, the node's env file, the
    library path extended (never replaced) with the EFA libraries it names, and the build env of
    DeepSpeed's ops (`HOST_OPS_ENV`: prepare's `TORCH_EXTENSIONS_DIR`, by default
    `HOST_TORCH_EXTENSIONS`, and `CUDA_HOME`; the runs load the ops built there), and the venv's
    `bin/` first on PATH (its `ninja`, without which DeepSpeed loads no op)."""
    return [
        "set -u",
        f"export AWS_REGION={shlex.quote(out.region)} AWS_DEFAULT_REGION={shlex.quote(out.region)}",
        # NCCL/EFA settings of the node's type (written by its user data).
        f"if [ -r {NODE_ENV_FILE} ]; then set -a; . {NODE_ENV_FILE}; set +a; fi",
        'if [ -n "${STRATUS_EFA_LIBRARY_PATH:-}" ]; then '
        'export LD_LIBRARY_PATH="$STRATUS_EFA_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi',
        # prepare's TORCH_EXTENSIONS_DIR (HOST_TORCH_EXTENSIONS unless its env named another) and CUDA_HOME
        OPS_ENV_LINE,
        # DeepSpeed loads even a built op only with `ninja` on PATH: the venv's (AL2023 has none)
        f'export PATH="{Path(HOST_PYTHON).parent}:$PATH"',
    ]


def scratch_check(run_dir: str) -> str:
    """Shell: refuse to train unless `run_dir` is on the scratch mount (a failed scratch unit would
    otherwise leave training writing to the root volume). `STRATUS_SCRATCH=none` in node.env (a type
    without local disks and no scratch volume) trains on the root volume by design."""
    q = shlex.quote
    return (
        f'if [ "${{STRATUS_SCRATCH:-nvme}}" != none ] && '
        f'[ "$(findmnt -n -o TARGET -T {q(run_dir)} 2>/dev/null)" != {SCRATCH_MOUNT} ]; then '
        f"echo '[stratus] {run_dir} is not on the scratch volume mounted at {SCRATCH_MOUNT} "
        "(stratus-scratch.service failed? see journalctl -u stratus-scratch.service): not training on the "
        "root volume' >&2; exit 1; fi"
    )


def efa_check(run_dir: str, node_rank: int) -> list[str]:
    """Shell, on EFA types (node.env: `FI_PROVIDER=efa`): libfabric must find the EFA provider
    (`fi_info -p efa`), and NCCL logs its network choice (INIT,NET) to a file under `run_dir` that
    the preflight reads (`runtime.train.preflight`: a fallback to sockets fails the run)."""
    q = shlex.quote
    log_file = f"{run_dir}/nccl/node{node_rank}.%h.%p.log"
    return [
        'if [ "${FI_PROVIDER:-}" = efa ]; then',
        '  if ! PATH="$PATH:/opt/amazon/efa/bin" fi_info -p efa -t FI_EP_RDM >/dev/null 2>&1; then '
        "echo '[stratus] EFA: fi_info -p efa finds no EFA device: is the EFA driver loaded and the interface "
        "attached? NCCL would fall back to TCP sockets' >&2; exit 1; fi",
        f"  mkdir -p {q(run_dir)}/nccl",
        f"  export NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET NCCL_DEBUG_FILE={q(log_file)}",
        f"  echo '[stratus] EFA: provider found; NCCL logs its network choice to {log_file}'",
        "fi",
    ]


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
    bundle = HOST_BUNDLE
    sync = SyncOptions(
        run_dir=Path(run_dir),
        bucket=out.checkpoints_bucket,
        prefix=checkpoints_prefix(job.run_name),
        kms_key_id=out.kms_key_arn,
        node_rank=node_rank,
        num_nodes=out.num_nodes,
        launch_id=job.launch_id,
    )
    lines = [
        *_preamble(out),
        # Checkpoints streamed to S3 after each commit (runtime.checkpoint.stream): the launch's NodeEnv knobs.
        f"export {launch_exports(job, node_rank)}",
        f"echo '[stratus] node {node_rank}/{out.num_nodes} ({out.private_ips[node_rank]}): installing the bundle'",
        # on failure the unit's last lines name the cause (a missing wheel, compiler, toolkit...)
        f"systemctl restart {PREPARE_UNIT} || {{ echo '[stratus] installing the runtime bundle failed; "
        f"see journalctl -u {PREPARE_UNIT}' >&2; journalctl -u {PREPARE_UNIT} -n 15 --no-pager -o cat >&2 2>/dev/null; "
        "exit 1; }",
        f"echo {q(f'{job.bundle_sha256}  {bundle}')} | sha256sum -c --status - || {{ echo '[stratus] {bundle} is "
        "not the bundle this launch uploaded (another launch replaced it?)' >&2; exit 1; }",
        # again: on a node's first launch prepare writes ops.env only now (the preamble found none), and a
        # run without its TORCH_EXTENSIONS_DIR would compile the ops again in torch's default cache
        OPS_ENV_LINE,
        f"mkdir -p {q(run_dir)}",
        scratch_check(run_dir),
        *efa_check(run_dir, node_rank),
    ]
    if job.min_bus_gbps is not None:  # the operator's floor over the node type's (NodeEnv.min_bus_gbps)
        lines.append(f"export STRATUS_MIN_BUS_GBPS={job.min_bus_gbps:g}")
    if job.config_file:
        path, content = job.config_file
        lines.append(f"echo {base64.b64encode(content).decode()} | base64 -d > {q(path)}")
    lines += [
        f"echo '[stratus] training; full log: {node_log}'",
        # The spot interruption watcher (IMDSv2): SIGTERM to the ranks on a notice (runtime.remote.watch).
        # Its endpoint is NodeEnv.imds_endpoint (node.env may name a stand-in).
        f"(cd {APP_DIR}/app && exec {HOST_PYTHON} -m runtime.remote.watch --pid $$ --interval 2) "
        f">> {q(node_log)} 2>&1 &",
        "watch_pid=$!",
        f"{node_launch_command(job, node_rank)} >> {q(node_log)} 2>&1",
        "rc=$?",
        'kill "$watch_pid" 2>/dev/null',
        f"tail -n 100 {q(node_log)}",
        shlex.join([HOST_PYTHON, "-m", "runtime.checkpoint.sync", *to_argv(sync)]),
        "sync_rc=$?",
        f'echo "[stratus] node {node_rank}: training exit $rc, checkpoint sync exit $sync_rc"',
        'if [ "$rc" -ne 0 ]; then exit "$rc"; fi',
        'exit "$sync_rc"',
    ]
    return lines


def launch_exports(job: NodeJob, node_rank: int) -> str:
    """`KEY=value ...` (shell-quoted) of the launch's `NodeEnv` knobs for node `node_rank`."""
    out = job.outputs
    env = NodeEnv(
        checkpoint_uri=checkpoints_uri(out.checkpoints_bucket, job.run_name),
        kms_key_arn=out.kms_key_arn,
        node_rank=node_rank,
        num_nodes=out.num_nodes,
        launch_id=job.launch_id,
    )
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.exports(LAUNCH_FIELDS).items())


def export_script(job: NodeJob, model_name: str | None = None) -> list[str]:
    """The `AWS-RunShellScript` lines that export and publish the run on node 0 after training.

    Runs `runtime.remote.publish` from the bundle the training launch installed: the newest
    verified checkpoint in S3 (every node's shards), the export in that process, publish to the
    models bucket with SSE-KMS. Exits with export's status.
    """
    out = job.outputs
    publish = PublishOptions(
        run=job.run_name,
        checkpoints_bucket=out.checkpoints_bucket,
        models_bucket=out.models_bucket,
        kms_key_id=out.kms_key_arn,
        model_name=model_name,
    )
    source = checkpoints_uri(out.checkpoints_bucket, job.run_name)
    return [
        *_preamble(out),
        f"echo '[stratus] node 0: exporting {job.run_name} from {source}'",
        f"cd {APP_DIR}/app && exec {shlex.join([HOST_PYTHON, '-m', 'runtime.remote.publish', *to_argv(publish)])}",
    ]
