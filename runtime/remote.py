"""Train on a Pulumi stack's training nodes through SSM Run Command (the nodes have no SSH).

Runbook:
    # what scripts/launch.sh --stack NAME runs; reads `pulumi stack output --json --stack NAME`
    python -m runtime.remote --stack dev -- --preset mlp-binary --set max_steps=200
    # without the Pulumi CLI here: outputs saved elsewhere with `pulumi stack output --json > FILE`
    python -m runtime.remote --outputs-file dev-outputs.json -- --data ./train.csv --run-name csv1
    # validate, then print the bundle contents, the S3 keys and every node's command; send nothing
    python -m runtime.remote --stack dev --dry-run -- --set parallel.zero_stage=3

Steps: validate the config and data here for the stack's world (nodes x GPUs); upload a local
`--data` file to s3://<datasets_bucket>/<run>/<name>; upload the runtime bundle to
s3://<models_bucket>/runtime/stratus-runtime.tar.gz (SSE-KMS with the stack key, like every
upload); send node i of N one `AWS-RunShellScript` command running DeepSpeed's per-node launcher
(`deepspeed.launcher.launch --node_rank=i`) and then `runtime.remote_sync`, which copies the
committed checkpoints to s3://<checkpoints_bucket>/<run>/ (manifest after files, `latest` last);
poll until every node is done, print each node's output tail.

Exit codes: 0 every node succeeded; 1 a node failed (named); 2 bad outputs, config, data or
arguments; 75 a node was preempted after committing a checkpoint (rerun with --resume);
130 interrupted here (the commands keep running on the nodes; the message says how to cancel).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.config import ConfigError
from runtime.data import DataError
from runtime.log import get_logger
from runtime.remote_plan import (
    BUNDLE_KEY,
    NODE_OUTPUT_DIR,
    NodeJob,
    RemoteError,
    StackOutputs,
    bundle_entries,
    node_script,
    node_train_args,
    read_outputs,
    write_bundle,
)
from runtime.remote_sync import head_or_none, kms_args
from runtime.train import build_parser as train_parser
from runtime.train import resolve_config, validate

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("Success", "Failed", "Cancelled", "TimedOut")
EXIT_BAD_INPUT, EXIT_PREEMPTED = 2, 75
log = get_logger()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.remote",
        description="Run `runtime train` on a stack's training nodes through SSM Run Command. "
        "Arguments after -- go to `python -m runtime train` (see its --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--stack", help="Pulumi stack whose outputs name the nodes, buckets and key")
    src.add_argument("--outputs-file", help="JSON of `pulumi stack output --json` (no Pulumi CLI needed)")
    p.add_argument("--dry-run", action="store_true", help="validate and print bundle, keys, commands; send nothing")
    p.add_argument("--master-port", type=int, default=29500, help="rendezvous port on node 0")
    p.add_argument("--wheels", type=Path, help="directory of wheels to ship for stacks without egress")
    p.add_argument("--poll-interval", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument(
        "--execution-timeout", type=int, default=172800, help="seconds SSM lets a node's command run (max 48 h)"
    )
    return p


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


class Launch:
    """One remote training launch: validated inputs and the plan; `run()` talks to AWS."""

    def __init__(self, opts: argparse.Namespace, train_argv: list[str]):
        self.opts = opts
        self.outputs: StackOutputs = read_outputs(stack=opts.stack, outputs_file=opts.outputs_file)
        targs = train_parser().parse_args(train_argv)
        self.dry_run = opts.dry_run or targs.dry_run
        if not 1 <= opts.execution_timeout <= 172800:
            raise RemoteError(f"--execution-timeout {opts.execution_timeout} must be 1..172800 seconds (SSM's range)")
        self.cfg = resolve_config(targs)
        world = self.outputs.world_size
        if targs.nproc != self.outputs.slots_per_node:
            log.info("--nproc %d ignored: the stack runs %d node(s) x %d GPU(s)", targs.nproc,
                     self.outputs.num_nodes, self.outputs.slots_per_node)  # fmt: skip
        _, data, spe = validate(self.cfg, world_size=world, device="cuda")
        log.info("config and data valid for %d ranks: %s, %d train rows, %d steps/epoch", world,
                 self.cfg.data.source, len(data.train_idx), spe)  # fmt: skip
        self.run_name = self.cfg.run_name
        self.launch_id = f"{self.run_name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
        source = self.cfg.data.source
        self.data_file: Path | None = None
        data_arg = targs.data
        if not source.startswith(("builtin:", "s3://")):
            self.data_file = Path(source)
            self.data_key = f"{self.run_name}/{self.data_file.name}"
            data_arg = f"s3://{self.outputs.datasets_bucket}/{self.data_key}"
        config_file = None
        if targs.config:
            node_path = f"{NODE_OUTPUT_DIR}/{self.run_name}/config-{self.launch_id}{Path(targs.config).suffix}"
            config_file = (node_path, Path(targs.config).read_bytes())
        self.entries = bundle_entries(ROOT, opts.wheels)
        self.resume = targs.resume
        self.train_args = node_train_args(targs, data=data_arg, config_path=config_file and config_file[0])
        self.config_file = config_file

    def job(self, bundle_sha256: str) -> NodeJob:
        return NodeJob(outputs=self.outputs, run_name=self.run_name, train_args=tuple(self.train_args),
                       bundle_sha256=bundle_sha256, launch_id=self.launch_id, master_port=self.opts.master_port,
                       config_file=self.config_file)  # fmt: skip

    def print_plan(self, job: NodeJob) -> None:
        out = self.outputs
        print(f"runtime bundle ({len(self.entries)} files, sha256 {job.bundle_sha256}):")
        for e in self.entries:
            print(f"  {e.size:>10}  {e.name}")
        print("S3 keys:")
        print(f"  bundle       s3://{out.models_bucket}/{BUNDLE_KEY}")
        if self.data_file:
            print(f"  data         s3://{out.datasets_bucket}/{self.data_key}  (from {self.data_file})")
        print(f"  checkpoints  s3://{out.checkpoints_bucket}/{self.run_name}/")
        print(f"  (uploads: SSE-KMS with {out.kms_key_arn})")
        for i, instance in enumerate(out.instance_ids):
            print(f"node {i} ({instance}, {out.private_ips[i]}): AWS-RunShellScript commands:")
            for line in node_script(job, i):
                print(f"  {line}")

    # --- AWS ------------------------------------------------------------------------------------

    def check_instances(self, ec2: Any) -> None:
        """Every output instance exists, runs, and has the private IP the outputs say."""
        out = self.outputs
        resp = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": list(out.instance_ids)}])
        found = {i["InstanceId"]: i for r in resp["Reservations"] for i in r["Instances"]}
        for rank, (iid, ip) in enumerate(zip(out.instance_ids, out.private_ips, strict=True)):
            inst = found.get(iid)
            if inst is None:
                raise RemoteError(
                    f"node {rank}: instance {iid} (trainer_instance_ids[{rank}]) does not exist in {out.region}; "
                    "the stack outputs are stale: run `pulumi refresh` and `pulumi up`"
                )
            state = inst.get("State", {}).get("Name")
            if state != "running":
                raise RemoteError(f"node {rank}: instance {iid} is {state}; start it or run `pulumi up`")
            if inst.get("PrivateIpAddress") != ip:
                raise RemoteError(
                    f"node {rank}: instance {iid} has private IP {inst.get('PrivateIpAddress')}, outputs say {ip}; "
                    "run `pulumi refresh`"
                )

    def check_run_is_new(self, s3: Any) -> None:
        key = f"{self.run_name}/latest"
        if not self.resume and head_or_none(s3, self.outputs.checkpoints_bucket, key) is not None:
            raise RemoteError(
                f"run {self.run_name!r} already has checkpoints in s3://{self.outputs.checkpoints_bucket}/"
                f"{self.run_name}/; pass --resume to continue it or --run-name NEW (nothing was changed)"
            )

    def upload(self, s3: Any, path: Path, bucket: str, key: str) -> None:
        s3.upload_file(str(path), bucket, key, ExtraArgs=kms_args(self.outputs.kms_key_arn))
        log.info("uploaded %s to s3://%s/%s", path.name, bucket, key)

    def send(self, ssm: Any, job: NodeJob) -> list[str]:
        ids = []
        for rank, iid in enumerate(self.outputs.instance_ids):
            resp = ssm.send_command(
                InstanceIds=[iid],
                DocumentName="AWS-RunShellScript",
                Comment=f"stratus {self.run_name} node {rank}/{self.outputs.num_nodes}"[:100],
                Parameters={"commands": node_script(job, rank), "executionTimeout": [str(self.opts.execution_timeout)]},
            )
            ids.append(resp["Command"]["CommandId"])
            log.info("node %d (%s): command %s sent", rank, iid, ids[-1])
        return ids

    def run(self) -> int:
        """Upload data and bundle, send a command per node, wait; returns the exit code (see module doc)."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        out = self.outputs
        with tempfile.TemporaryDirectory(prefix="stratus-bundle-") as tmp:
            bundle = Path(tmp) / "stratus-runtime.tar.gz"
            job = self.job(write_bundle(self.entries, bundle))
            if self.dry_run:
                self.print_plan(job)
                return 0
            s3 = boto3.client("s3", region_name=out.region)
            self.check_instances(boto3.client("ec2", region_name=out.region))
            self.check_run_is_new(s3)
            if self.data_file:
                self.upload(s3, self.data_file, out.datasets_bucket, self.data_key)
            self.upload(s3, bundle, out.models_bucket, BUNDLE_KEY)
        ssm = boto3.client("ssm", region_name=out.region)
        command_ids = self.send(ssm, job)
        try:
            results = wait_for_nodes(ssm, list(out.instance_ids), command_ids, interval=self.opts.poll_interval)
        except (KeyboardInterrupt, ClientError, BotoCoreError) as e:
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"polling failed ({e})"
            ids = " ".join(command_ids)
            print(f"{why}: the commands keep running on the nodes; follow or cancel them with\n"
                  f"  for c in {ids}; do aws ssm list-command-invocations --region {out.region} --details "
                  f"--command-id $c; done\n"
                  f"  for c in {ids}; do aws ssm cancel-command --region {out.region} --command-id $c; done",
                  file=sys.stderr)  # fmt: skip
            return 130 if isinstance(e, KeyboardInterrupt) else 1
        return report(results, run_name=self.run_name)


def _invocation(ssm: Any, command_id: str, instance_id: str) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        return ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "InvocationDoesNotExist":
            return {"Status": "Pending", "StatusDetails": "Pending"}  # not registered yet, right after sending
        raise


def wait_for_nodes(
    ssm: Any,
    instance_ids: list[str],
    command_ids: list[str],
    *,
    interval: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    out: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Poll each node's invocation until all are terminal, printing `node status` lines.

    A failing node does not cancel the others: they fail at the collective timeout by themselves
    and still sync what was committed. Returns the final invocations in node order.
    """
    results: list[dict[str, Any] | None] = [None] * len(instance_ids)
    start = time.monotonic()
    while True:
        for rank, (iid, cid) in enumerate(zip(instance_ids, command_ids, strict=True)):
            if results[rank] is None or results[rank]["Status"] not in TERMINAL:
                results[rank] = _invocation(ssm, cid, iid)
        elapsed = int(time.monotonic() - start)
        states = "  ".join(
            f"node{r} {iid} {res['Status']}" for r, (iid, res) in enumerate(zip(instance_ids, results, strict=True))
        )
        out(f"[remote] {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}  {states}")
        if all(r["Status"] in TERMINAL for r in results):
            return results  # type: ignore[return-value]
        sleep(interval)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


_HINTS = {
    "Undeliverable": "the SSM agent is unreachable: is the node running and registered "
    "(aws ssm describe-instance-information)?",
    "DeliveryTimedOut": "the SSM agent never picked the command up: check the node and its instance profile",
    "ExecutionTimedOut": "the command ran past --execution-timeout",
}


def report(results: list[dict[str, Any]], *, run_name: str, out: Callable[[str], None] = print) -> int:
    """Print each node's output tail; return 0, 75 (only preemptions) or 1, naming failed nodes."""
    failed = []
    for rank, res in enumerate(results):
        out(f"--- node {rank} ({res.get('InstanceId', '?')}): {res['Status']} ({res.get('StatusDetails', '')}), "
            f"exit {res.get('ResponseCode', '?')}")  # fmt: skip
        if res.get("StandardOutputContent"):
            out(_tail(res["StandardOutputContent"]))
        if res["Status"] != "Success":
            if res.get("StandardErrorContent"):
                out(_tail(res["StandardErrorContent"], 20))
            failed.append((rank, res))
    if not failed:
        out(f"[remote] {run_name}: every node succeeded")
        return 0
    for rank, res in failed:
        hint = _HINTS.get(res.get("StatusDetails", ""), "see its output above and the full log on the node")
        log.error("node %d (%s) %s, exit %s: %s", rank, res.get("InstanceId", "?"), res["Status"],
                  res.get("ResponseCode", "?"), hint)  # fmt: skip
    if all(res.get("ResponseCode") == EXIT_PREEMPTED for _, res in failed):
        log.error("preempted after committing a checkpoint: rerun with --resume --run-name %s", run_name)
        return EXIT_PREEMPTED
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from botocore.exceptions import BotoCoreError, ClientError

    own, train_argv = _split(argv)
    opts = build_parser().parse_args(own)
    try:
        return Launch(opts, train_argv).run()
    except (RemoteError, ConfigError, DataError) as e:
        log.error("%s", e)
        return EXIT_BAD_INPUT
    except (ClientError, BotoCoreError) as e:
        log.error(
            "AWS refused or failed a call: %s; check the credentials are for the stack's account "
            "(aws sts get-caller-identity) and allow EC2 describe, S3 put with the stack key, and SSM SendCommand",
            e,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
