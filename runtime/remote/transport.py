"""How a launch reaches its nodes: one shell script per node, started, polled, cancelled.

`runtime.remote.command` knows only `NodeTransport`. `SsmTransport` here is production: SSM Run
Command `AWS-RunShellScript` on the stack's instances. The simulated nodes' transport
(`sim.transport.LocalTransport`, the same script lines run in Linux network namespaces) lives in
the development package `sim/`, outside the runtime bundle; the `stratus` front door hands it to
the launch for `--sim-dir`.

Every transport answers `get_command_invocation` in the shape of SSM's answer (`Status`,
`StatusDetails`, `ResponseCode`, `StandardOutputContent`, `StandardErrorContent`, `InstanceId`),
so the poll loop and the report are the same code for all. A transport also lists the training
nodes' Auto Scaling group (`group_state`): SSM's from EC2's APIs, the simulator's from its own
group, so that discovery and recovery (`runtime.remote.fleet`) are the same code for all too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from runtime.remote.fleet import GroupState, read_group
from runtime.remote.outputs import RemoteError, StackOutputs

OUTPUT_LIMIT = 24000
"""Characters of output SSM keeps per stream (every transport keeps as many)."""


class NodeTransport(ABC):
    """Runs one script per node and reports on it in SSM's terms."""

    @abstractmethod
    def check_nodes(self, outputs: StackOutputs) -> None:
        """Raise RemoteError naming the node when an output instance cannot take a command."""

    @abstractmethod
    def send(self, instance_id: str, lines: Sequence[str], *, comment: str, timeout_s: int) -> str:
        """Start `lines` (POSIX sh, as root) on the instance; return a command id."""

    @abstractmethod
    def get_command_invocation(self, CommandId: str, InstanceId: str) -> dict[str, Any]:  # noqa: N803 (SSM's)
        """The invocation's state in SSM's shape."""

    @abstractmethod
    def cancel(self, command_id: str, instance_id: str) -> None:
        """Stop the command on the instance (its processes get SIGTERM, then SIGKILL)."""

    def describe(self, command_ids: Sequence[str]) -> str:
        """How an operator follows or cancels the commands by hand (printed on Ctrl-C)."""
        return ""

    def group_state(self, name: str) -> GroupState:
        """The training nodes' Auto Scaling group `name` now: desired size and ranked members.

        Raises:
            RemoteError: no such group (or a transport that cannot list groups).
        """
        raise RemoteError(f"{type(self).__name__} cannot list Auto Scaling group {name}")


class SsmTransport(NodeTransport):
    """SSM Run Command; `ssm`/`ec2`/`autoscaling` are boto3 clients in the stack's region."""

    def __init__(self, ssm: Any, ec2: Any, region: str, autoscaling: Any = None):
        self.ssm, self.ec2, self.region, self.autoscaling = ssm, ec2, region, autoscaling

    def check_nodes(self, outputs: StackOutputs) -> None:
        """Every output instance exists, runs, and has the private IP the outputs say."""
        resp = self.ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": list(outputs.instance_ids)}])
        found = {i["InstanceId"]: i for r in resp["Reservations"] for i in r["Instances"]}
        for rank, (iid, ip) in enumerate(zip(outputs.instance_ids, outputs.private_ips, strict=True)):
            inst = found.get(iid)
            if inst is None:
                raise RemoteError(
                    f"node {rank}: instance {iid} (trainer_instance_ids[{rank}]) does not exist in {outputs.region}; "
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

    def group_state(self, name: str) -> GroupState:
        if self.autoscaling is None:
            return super().group_state(name)
        return read_group(self.autoscaling, self.ec2, name)

    def send(self, instance_id: str, lines: Sequence[str], *, comment: str, timeout_s: int) -> str:
        resp = self.ssm.send_command(
            InstanceIds=[instance_id],
            DocumentName="AWS-RunShellScript",
            Comment=comment[:100],
            Parameters={"commands": list(lines), "executionTimeout": [str(timeout_s)]},
        )
        return resp["Command"]["CommandId"]

    def get_command_invocation(self, CommandId: str, InstanceId: str) -> dict[str, Any]:  # noqa: N803
        from botocore.exceptions import ClientError

        try:
            return self.ssm.get_command_invocation(CommandId=CommandId, InstanceId=InstanceId)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvocationDoesNotExist":
                return {"Status": "Pending", "StatusDetails": "Pending"}  # not registered yet, right after sending
            raise

    def cancel(self, command_id: str, instance_id: str) -> None:
        self.ssm.cancel_command(CommandId=command_id, InstanceIds=[instance_id])

    def describe(self, command_ids: Sequence[str]) -> str:
        ids = " ".join(command_ids)
        return (
            f"  for c in {ids}; do aws ssm list-command-invocations --region {self.region} --details "
            f"--command-id $c; done\n"
            f"  for c in {ids}; do aws ssm cancel-command --region {self.region} --command-id $c; done"
        )
