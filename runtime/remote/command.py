"""`stratus remote`: train on a Pulumi stack's training nodes through SSM Run Command (no SSH).

Runbook:
    # what scripts/launch.sh --stack NAME runs; reads `pulumi stack output --json --stack NAME`
    stratus remote --stack dev -- --preset mlp-binary --set max_steps=200
    # without the Pulumi CLI here: outputs saved elsewhere with `pulumi stack output --json > FILE`
    stratus remote --outputs-file dev-outputs.json -- --data ./train.csv --run-name csv1
    # validate, then print the bundle contents, the S3 keys and every node's command; send nothing
    stratus remote --stack dev --dry-run -- --set parallel.zero_stage=3

(`python -m runtime remote ...` and `python -m runtime.remote ...` are the same command, less
`--sim-dir`: the simulated nodes' transport is in the development package `sim/`, which the
`stratus` front door injects (`sim_transport`); the runtime never imports it.)

Steps: list the nodes (the stack's training Auto Scaling group now: `runtime.remote.fleet`);
validate the config and data here for the stack's world (nodes x GPUs); upload a local
`--data` file to s3://<datasets_bucket>/<run>/<name>; with --wheels, upload the wheelhouse to
s3://<models_bucket>/runtime/wheelhouse/<sha256>.tar unless it is there already
(`runtime.remote.wheelhouse`; the bundle carries only its manifest); upload the runtime bundle to
s3://<models_bucket>/runtime/stratus-runtime.tar.gz (SSE-KMS with the stack key, like every
upload); send node i of N one `AWS-RunShellScript` command running DeepSpeed's per-node launcher
(`deepspeed.launcher.launch --node_rank=i`) and then `runtime.checkpoint.sync`, which copies the
committed checkpoints to s3://<checkpoints_bucket>/<run>/ (manifest after files, `latest` last);
poll until every node is done, print each node's output tail. With --export (scripts/launch.sh
--stack passes it unless --no-export), node 0 then exports the newest checkpoint in S3 and
publishes the model to s3://<models_bucket>/models/ (`runtime.remote.publish`), where the serving
host's next poll picks the new version up.

Exit codes (docs/architecture.md): 0 every node succeeded (and, with --export, the model is
published); 1 a node failed, or the export on node 0 did (named, with export's own exit code:
3 no checkpoint in S3 verifies, 4 the gate failed and nothing was published); 2 bad outputs,
config, data or arguments, or a Capacity Block ending within 35 minutes; 75 a node was
preempted after committing a checkpoint (rerun with --resume); 130 interrupted here (the
commands keep running on the nodes; the message says how to cancel).
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtime.checkpoint.local import LATEST, existing_run_message
from runtime.common.log import get_logger
from runtime.common.options import option, parse_options
from runtime.common.s3 import head_or_none, sse_kms_args
from runtime.contract import (
    BUNDLE_KEY,
    NODE_OUTPUT_DIR,
    ExitCode,
    checkpoints_prefix,
    checkpoints_uri,
)
from runtime.remote import fleet, wheelhouse
from runtime.remote.bundle import bundle_entries, write_bundle
from runtime.remote.nodes import NodeJob, export_script, node_script, node_train_args
from runtime.remote.outputs import RemoteError, read_outputs
from runtime.remote.progress import report, tail, wait_for_nodes
from runtime.remote.transport import NodeTransport, SsmTransport
from runtime.remote.wheels import WheelsError, check_install_path
from runtime.train.command import TrainOptions, parse_train_options, validate
from runtime.train.config import ConfigError
from runtime.train.data import DataError

ROOT = Path(__file__).resolve().parents[2]
MAX_EXECUTION_TIMEOUT_S = 172800  # SSM's limit for AWS-RunShellScript (48 h)
log = get_logger()
EXPORT_FAILURES = {
    ExitCode.NO_CHECKPOINT: "no checkpoint in S3 verifies",
    ExitCode.GATE_FAILED: "the accuracy gate failed, nothing was published",
    ExitCode.BAD_INPUT: "bad export arguments or data",
}
SimTransport = Callable[[Path], NodeTransport]  # the transport to a --sim-dir's nodes (sim.transport)


@dataclass(kw_only=True)
class RemoteOptions:
    """The options of `stratus remote` (those after `--` are `stratus train`'s)."""

    stack: str | None = option(None, metavar="NAME")
    """Pulumi stack whose outputs name the nodes, buckets and key."""

    outputs_file: str | None = option(None, metavar="FILE")
    """JSON of `pulumi stack output --json` (no Pulumi CLI needed)."""

    sim_dir: str | None = option(None, metavar="DIR")
    """A simulated stack made by `scripts/sim-stack.sh up DIR`: outputs from DIR/outputs.json, each
    node's script run in its network namespace on this machine instead of through SSM (`stratus
    remote` only: the simulator is not part of the runtime)."""

    dry_run: bool = False
    """Validate and print the bundle, the S3 keys and every node's commands; send nothing."""

    master_port: int = option(29500, metavar="PORT")
    """Rendezvous port on node 0."""

    wheels: Path | None = option(None, metavar="DIR")
    """Wheelhouse made by `stratus wheels --dest DIR`, uploaded as one object named by its sha256
    (s3://<models_bucket>/runtime/wheelhouse/<sha256>.tar, skipped when already there; the bundle
    carries its manifest): the nodes fetch it only to rebuild their venv and install from it
    offline (`pip --no-index`). Needed when the stack has no egress (`egress_enabled`)."""

    min_bus_gbps: float | None = option(None, metavar="GBPS")
    """The preflight's all-reduce bus bandwidth floor on the nodes (GB/s; 0: only log it). Default:
    the instance type's (about a quarter of the EFA bandwidth on EFA types, none on others)."""

    poll_interval: float = option(10.0, metavar="SECONDS")
    """Seconds between progress lines."""

    max_restarts: int = option(0, metavar="N")
    """After a failed or preempted node, relaunch on the stack's nodes with --resume up to N times
    (training resumes from the newest checkpoint in S3)."""

    fleet_timeout: float = option(fleet.DEFAULT_FLEET_TIMEOUT_S, metavar="SECONDS")
    """Wait this long (at launch, before each restart) for the training Auto Scaling group to be whole."""

    execution_timeout: int = option(MAX_EXECUTION_TIMEOUT_S, metavar="SECONDS")
    """Seconds SSM lets a node's command run (at most 48 h)."""

    export: bool = False
    """Once every node succeeded, export the run on node 0 from its newest checkpoint in S3 and
    publish the model to s3://<models_bucket>/models/ (the serving host picks it up)."""

    model_name: str | None = option(None, metavar="NAME")
    """With --export: the published model's name (default: the preset); the serving host serves
    the stack's `model-name`."""

    def __post_init__(self) -> None:
        if sum(map(bool, (self.stack, self.outputs_file, self.sim_dir))) != 1:
            raise RemoteError("name the stack: exactly one of --stack NAME, --outputs-file FILE or --sim-dir DIR")
        if not 1 <= self.execution_timeout <= MAX_EXECUTION_TIMEOUT_S:
            limit = f"1..{MAX_EXECUTION_TIMEOUT_S} seconds (SSM's range)"
            raise RemoteError(f"--execution-timeout {self.execution_timeout} must be {limit}")
        if not 0 < self.master_port < 65536:
            raise RemoteError(f"--master-port {self.master_port}: use 1-65535")
        if self.min_bus_gbps is not None and not self.min_bus_gbps >= 0:
            raise RemoteError(f"--min-bus-gbps {self.min_bus_gbps}: give GB/s >= 0 (0: only log the figure)")
        if self.fleet_timeout < 0:
            raise RemoteError(f"--fleet-timeout {self.fleet_timeout}: use 0 or more seconds")


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


class Launch:
    """One remote training launch: validated inputs and the plan; `run()` talks to AWS."""

    def __init__(self, opts: RemoteOptions, train_opts: TrainOptions, *, sim_transport: SimTransport | None = None):
        if opts.sim_dir and sim_transport is None:
            raise RemoteError(
                "--sim-dir needs the simulator, a development package the runtime does not carry: run "
                "`stratus remote --sim-dir DIR ...` (or `scripts/launch.sh --sim-dir DIR`) from the repository's venv"
            )
        self.opts, self.sim_transport = opts, sim_transport
        outputs_file = Path(opts.sim_dir) / "outputs.json" if opts.sim_dir else opts.outputs_file
        out = self.outputs = read_outputs(stack=opts.stack, outputs_file=outputs_file)
        out = self.outputs = fleet.launch_nodes(  # a group's members now, not frozen outputs
            self.transport, out, timeout_s=opts.fleet_timeout, interval=opts.poll_interval
        )
        self.dry_run = opts.dry_run or train_opts.dry_run
        self.cfg = train_opts.train_config()
        if train_opts.nproc != out.slots_per_node:
            nodes = f"{out.num_nodes} node(s) x {out.slots_per_node} GPU(s)"
            log.info("--nproc %d ignored: the stack runs %s", train_opts.nproc, nodes)
        _, data, spe = validate(self.cfg, world_size=out.world_size, device="cuda")
        found = f"{self.cfg.data.source}, {len(data.train_idx)} train rows, {spe} steps/epoch"
        log.info("config and data valid for %d ranks: %s", out.world_size, found)
        self.run_name = self.cfg.run_name
        self.launch_id = f"{self.run_name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
        source = self.cfg.data.source
        self.data_file: Path | None = None
        data_arg = train_opts.data
        if not source.startswith(("builtin:", "s3://")):
            self.data_file = Path(source)
            self.data_key = f"{self.run_name}/{self.data_file.name}"
            data_arg = f"s3://{self.outputs.datasets_bucket}/{self.data_key}"
        self.config_file = None
        if train_opts.config:
            node_path = f"{NODE_OUTPUT_DIR}/{self.run_name}/config-{self.launch_id}{Path(train_opts.config).suffix}"
            self.config_file = (node_path, Path(train_opts.config).read_bytes())
        check_install_path(out, opts.wheels, gpu=not opts.sim_dir)
        self.wheelhouse = wheelhouse.read_wheelhouse(opts.wheels) if opts.wheels else None
        self.entries = bundle_entries(ROOT, self.wheelhouse and self.wheelhouse.manifest(out.models_bucket))
        self.resume = train_opts.resume
        self.sent_job: NodeJob | None = None
        self.train_args = node_train_args(
            train_opts, data=data_arg, config_path=self.config_file and self.config_file[0]
        )

    def job(self, bundle_sha256: str) -> NodeJob:
        return NodeJob(
            outputs=self.outputs,
            run_name=self.run_name,
            train_args=tuple(self.train_args),
            bundle_sha256=bundle_sha256,
            launch_id=self.launch_id,
            master_port=self.opts.master_port,
            config_file=self.config_file,
            min_bus_gbps=self.opts.min_bus_gbps,
        )

    def print_plan(self, job: NodeJob) -> None:
        out = self.outputs
        print(f"runtime bundle ({len(self.entries)} files, sha256 {job.bundle_sha256}):")
        for e in self.entries:
            print(f"  {e.size:>10}  {e.name}")
        print("S3 keys:")
        print(f"  bundle       s3://{out.models_bucket}/{BUNDLE_KEY}")
        if self.wheelhouse:
            print(wheelhouse.plan_line(self.wheelhouse, out.models_bucket, self.s3))
        if self.data_file:
            print(f"  data         s3://{out.datasets_bucket}/{self.data_key}  (from {self.data_file})")
        print(f"  checkpoints  {checkpoints_uri(out.checkpoints_bucket, self.run_name)}")
        print(f"  (uploads: SSE-KMS with {out.kms_key_arn})", *fleet.plan_lines(out), sep="\n")
        for i, instance in enumerate(out.instance_ids):
            print(f"node {i} ({instance}, {out.private_ips[i]}): AWS-RunShellScript commands:")
            for line in node_script(job, i):
                print(f"  {line}")
        if self.opts.export:
            print(f"then node 0 ({out.instance_ids[0]}), once every node succeeded: export and publish:")
            for line in export_script(job, self.opts.model_name):
                print(f"  {line}")

    # --- AWS ------------------------------------------------------------------------------------

    def check_run_is_new(self, s3: Any) -> None:
        key = f"{checkpoints_prefix(self.run_name)}{LATEST}"
        if not self.resume and head_or_none(s3, self.outputs.checkpoints_bucket, key) is not None:
            raise RemoteError(
                existing_run_message(self.run_name, checkpoints_uri(self.outputs.checkpoints_bucket, self.run_name))
            )

    def upload(self, s3: Any, path: Path, bucket: str, key: str) -> None:
        s3.upload_file(str(path), bucket, key, ExtraArgs=sse_kms_args(self.outputs.kms_key_arn))
        log.info("uploaded %s to s3://%s/%s", path.name, bucket, key)

    def s3(self) -> Any:
        import boto3

        return boto3.client("s3", region_name=self.outputs.region)

    def transport(self) -> NodeTransport:
        """SSM Run Command, or the simulated nodes of `--sim-dir`."""
        if self.opts.sim_dir:  # __init__ refused --sim-dir without a simulator transport
            return self.sim_transport(Path(self.opts.sim_dir))
        import boto3

        region = self.outputs.region
        ssm, ec2, asg = (boto3.client(c, region_name=region) for c in ("ssm", "ec2", "autoscaling"))
        return SsmTransport(ssm, ec2, region, autoscaling=asg)

    def send(self, transport: NodeTransport, job: NodeJob) -> list[str] | None:
        """A command per node; None (logged, those sent cancelled) when a node cannot take it."""
        ids = []
        for rank, iid in enumerate(self.outputs.instance_ids):
            comment = f"stratus {self.run_name} node {rank}/{self.outputs.num_nodes}"
            lines, timeout_s = node_script(job, rank), self.opts.execution_timeout
            try:
                ids.append(transport.send(iid, lines, comment=comment, timeout_s=timeout_s))
            except fleet.send_errors() as e:  # e.g. an instance terminated since it was listed
                log.error("node %d (%s) cannot take the command: %s; no node trains", rank, iid, e)
                return fleet.cancel_sent(transport, self.outputs, ids)
            log.info("node %d (%s): command %s sent", rank, iid, ids[-1])
        return ids

    def run(self) -> int:
        """Upload data, wheelhouse and bundle, send a command per node, wait; returns the exit code (see module doc)."""
        out = self.outputs
        with tempfile.TemporaryDirectory(prefix="stratus-bundle-") as tmp:
            bundle = Path(tmp) / "stratus-runtime.tar.gz"
            job = self.job(write_bundle(self.entries, bundle))
            if self.dry_run:
                self.print_plan(job)
                return ExitCode.OK
            fleet.check_capacity_block(out)
            s3 = self.s3()
            transport = self.transport()
            transport.check_nodes(out)
            self.check_run_is_new(s3)
            if self.data_file:
                self.upload(s3, self.data_file, out.datasets_bucket, self.data_key)
            if self.wheelhouse:  # before the bundle that names it
                wheelhouse.upload(s3, self.wheelhouse, out.models_bucket, out.kms_key_arn, Path(tmp))
            self.upload(s3, bundle, out.models_bucket, BUNDLE_KEY)
        code = self.attempt(transport, job)
        restarts = self.opts.max_restarts
        for restart in range(1, restarts + 1):
            if code not in (ExitCode.FAILED, ExitCode.PREEMPTED):
                break
            wait = {"timeout_s": self.opts.fleet_timeout, "interval": self.opts.poll_interval}
            if (nodes := fleet.restart_nodes(transport, out, restart=restart, restarts=restarts, **wait)) is None:
                break  # the group not whole in time, or the Capacity Block about to end
            args = job.train_args if "--resume" in job.train_args else (*job.train_args, "--resume")
            out = self.outputs = nodes  # a replaced node: new id and IP; the world info follows
            job = replace(job, outputs=out, train_args=args, launch_id=f"{self.launch_id}-r{restart}")
            nodes_text = ", ".join(out.instance_ids)
            log.warning("restart %d of %d: relaunching on %s with --resume (from S3)", restart, restarts, nodes_text)
            code = self.attempt(transport, job)
        if code == ExitCode.OK and self.opts.export:
            code = self.export(transport, job)
        return code

    def export(self, transport: NodeTransport, job: NodeJob) -> ExitCode:
        """Export and publish on node 0 (`runtime.remote.publish`); returns export's exit code."""
        iid = self.outputs.instance_ids[0]
        lines = export_script(job, self.opts.model_name)
        command_id = transport.send(
            iid, lines, comment=f"stratus {self.run_name} export", timeout_s=self.opts.execution_timeout
        )
        log.info("node 0 (%s): export command %s sent", iid, command_id)
        try:
            res = wait_for_nodes(transport, [iid], [command_id], interval=self.opts.poll_interval)[0]
        except KeyboardInterrupt:
            how = transport.describe([command_id])
            print(f"interrupted: the export keeps running on node 0\n{how}", file=sys.stderr)
            return ExitCode.INTERRUPTED
        print(tail(res.get("StandardOutputContent", "")))
        if res["Status"] == "Success":
            log.info("%s exported and published to s3://%s/models/", self.run_name, self.outputs.models_bucket)
            return ExitCode.OK
        print(tail(res.get("StandardErrorContent", ""), 20), file=sys.stderr)
        code = res.get("ResponseCode")
        log.error(
            f"training succeeded, but the export on node 0 ({iid}) {res['Status']} with exit {code} "
            f"({EXPORT_FAILURES.get(code, 'see its output above')}); the checkpoints are in "
            f"{checkpoints_uri(self.outputs.checkpoints_bucket, self.run_name)}"
        )
        return ExitCode.FAILED

    def attempt(self, transport: NodeTransport, job: NodeJob) -> ExitCode:
        """Send `job` to every node, wait, report. A node that fails (not preempted) stops the others."""
        from botocore.exceptions import BotoCoreError, ClientError

        out = self.outputs
        self.sent_job = job
        if (command_ids := self.send(transport, job)) is None:
            return ExitCode.FAILED

        def stop_others(failed: int, running: list[int]) -> None:
            others = ", ".join(map(str, running))
            log.error("node %d (%s) failed: stopping node(s) %s", failed, out.instance_ids[failed], others)
            for rank in running:
                transport.cancel(command_ids[rank], out.instance_ids[rank])

        try:
            results = wait_for_nodes(
                transport, list(out.instance_ids), command_ids, interval=self.opts.poll_interval, on_failure=stop_others
            )
        except (KeyboardInterrupt, ClientError, BotoCoreError) as e:
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"polling failed ({e})"
            print(
                f"{why}: the commands keep running on the nodes; follow or cancel them with\n"
                f"{transport.describe(command_ids)}",
                file=sys.stderr,
            )
            return ExitCode.INTERRUPTED if isinstance(e, KeyboardInterrupt) else ExitCode.FAILED
        return report(results, run_name=self.run_name)


def main(argv: list[str] | None = None, *, sim_transport: SimTransport | None = None) -> int:
    """Entry of `stratus remote` (`sim_transport`: for --sim-dir, from `stratus.remote`); an `ExitCode`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    own, train_argv = _split(argv)
    try:
        opts = parse_options(RemoteOptions, own, prog="stratus remote", description=__doc__)
        return Launch(opts, parse_train_options(train_argv), sim_transport=sim_transport).run()
    except (RemoteError, WheelsError, ConfigError, DataError) as e:
        log.error("%s", e)
        return ExitCode.BAD_INPUT
    except (ClientError, BotoCoreError, Boto3Error) as e:
        log.error(
            "AWS refused or failed a call: %s; check the credentials are for the stack's account "
            "(aws sts get-caller-identity) and allow EC2 and Auto Scaling describe calls, S3 put with the stack key, "
            "and SSM SendCommand",
            e,
        )
        return ExitCode.FAILED


if __name__ == "__main__":
    sys.exit(main())
