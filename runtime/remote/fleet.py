"""Which nodes a launch trains on: the stack's Auto Scaling group as it is now, and when to stop.

Recovery of `stratus remote` lives here, in one place; `runtime.remote.command` calls it before
the first attempt and before each `--max-restarts` relaunch:

- **Discovery** (`discover`): a stack whose training nodes are an EC2 Auto Scaling group
  (output `trainer_autoscaling_group`) has no fixed instance ids: a node that is terminated (spot
  reclaimed, hardware retired, Capacity Block ending) is replaced by the group under a new id and
  a new private IP. The launcher lists the group's members at launch time (`GroupState`, from the
  transport: `describe_auto_scaling_groups`, then `describe_instances` for the IPs), waits, bounded,
  until the group is whole (exactly `desired` members InService, Healthy and running), and ranks
  them by launch time, then id: node 0, the rendezvous address, is the oldest member, so a
  replacement joins as the last rank. A stack without the group output (older) keeps its frozen
  `trainer_instance_ids` / `trainer_private_ips`.
- **Capacity Block end** (`check_capacity_block`): EC2 starts terminating a Capacity Block's
  instances 30 minutes before the block ends, so no attempt is (re)launched with less than
  `CAPACITY_BLOCK_MARGIN` left (`trainer_capacity_block_end`, when the stack exports it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from runtime.common.log import get_logger
from runtime.contract import OUTPUT_TRAINER_AUTOSCALING_GROUP
from runtime.remote.outputs import RemoteError, StackOutputs

DEFAULT_FLEET_TIMEOUT_S = 900.0
"""How long a launch waits for the group to be whole (a replacement p5 boots and prepares in minutes)."""
CAPACITY_BLOCK_MARGIN = timedelta(minutes=35)
"""No (re)launch with less than this left in the Capacity Block: EC2 starts terminating its instances
30 minutes before the block's end; 5 more minutes leave room for a commit and its upload."""
log = get_logger()


@dataclass(frozen=True, kw_only=True)
class Member:
    """One instance of the group that can take a node's command."""

    instance_id: str
    private_ip: str
    launch_time: float
    """Seconds since the epoch (the simulator: a launch counter); the first rank key."""


@dataclass(frozen=True, kw_only=True)
class GroupState:
    """An Auto Scaling group as `describe_auto_scaling_groups` sees it now."""

    name: str
    desired: int
    """The group's desired capacity: how many nodes a launch trains on."""
    members: tuple[Member, ...]
    """InService, Healthy and running instances, ranked (launch time, then id)."""
    waiting: tuple[str, ...] = ()
    """`<id> <state>` of every other instance of the group (launching, unhealthy, terminating)."""

    @property
    def whole(self) -> bool:
        return self.desired > 0 and len(self.members) == self.desired

    def describe(self) -> str:
        others = f"; not ready: {', '.join(self.waiting)}" if self.waiting else ""
        return f"Auto Scaling group {self.name}: {len(self.members)} of {self.desired} node(s) in service{others}"


class Nodes(Protocol):
    """What recovery needs of a transport (`runtime.remote.transport.NodeTransport` has it all)."""

    def group_state(self, name: str) -> GroupState: ...

    def check_nodes(self, outputs: StackOutputs) -> None: ...

    def cancel(self, command_id: str, instance_id: str) -> None: ...


def ranked(members: list[Member]) -> tuple[Member, ...]:
    """Members in rank order: launch time, then instance id (deterministic for equal times)."""
    return tuple(sorted(members, key=lambda m: (m.launch_time, m.instance_id)))


def read_group(autoscaling: Any, ec2: Any, name: str) -> GroupState:
    """The group `name` through boto3's `autoscaling` and `ec2` clients (one call each).

    Raises:
        RemoteError: no such group in the clients' region (naming the output and `pulumi up`).
    """
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    if not groups:
        raise RemoteError(
            f"Auto Scaling group {name} ({OUTPUT_TRAINER_AUTOSCALING_GROUP}) does not exist in this region; "
            "the stack outputs are stale: run `pulumi refresh` and `pulumi up`"
        )
    group = groups[0]
    ready = [
        i["InstanceId"]
        for i in group.get("Instances", [])
        if i.get("LifecycleState") == "InService" and i.get("HealthStatus") == "Healthy"
    ]
    waiting = [
        f"{i['InstanceId']} {i.get('LifecycleState')}/{i.get('HealthStatus')}"
        for i in group.get("Instances", [])
        if i["InstanceId"] not in ready
    ]
    members = []
    if ready:
        resp = ec2.describe_instances(InstanceIds=ready)
        for inst in (i for r in resp["Reservations"] for i in r["Instances"]):
            state = inst.get("State", {}).get("Name")
            if state != "running" or not inst.get("PrivateIpAddress"):
                waiting.append(f"{inst['InstanceId']} {state}")
                continue
            launched = inst["LaunchTime"]
            members.append(
                Member(
                    instance_id=inst["InstanceId"],
                    private_ip=inst["PrivateIpAddress"],
                    launch_time=launched.timestamp() if isinstance(launched, datetime) else float(launched),
                )
            )
    return GroupState(name=name, desired=int(group["DesiredCapacity"]), members=ranked(members), waiting=tuple(waiting))


def wait_for_group(
    read: Callable[[], GroupState],
    *,
    timeout_s: float = DEFAULT_FLEET_TIMEOUT_S,
    interval: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> GroupState:
    """Poll `read()` until the group is whole; log its state whenever it changes.

    Raises:
        RemoteError: still not whole after `timeout_s`, naming the group and the counts.
    """
    deadline = clock() + timeout_s
    last = None
    while True:
        state = read()
        if state.whole:
            return state
        line = state.describe()
        if line != last:
            log.warning("waiting up to %.0f s for the nodes: %s", max(0.0, deadline - clock()), line)
            last = line
        if clock() >= deadline:
            raise RemoteError(
                f"{line} after waiting {timeout_s:.0f} s (--fleet-timeout); check the group's activity "
                f"(aws autoscaling describe-scaling-activities --auto-scaling-group-name {state.name}): "
                "capacity, quota or a failing launch template; rerun with --resume once it is whole"
            )
        sleep(interval)


def discover(
    transport: Nodes,
    outputs: StackOutputs,
    *,
    timeout_s: float = DEFAULT_FLEET_TIMEOUT_S,
    interval: float = 10.0,
    num_nodes: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> StackOutputs:
    """`outputs` with the nodes of its Auto Scaling group now (unchanged without a group output).

    `num_nodes`: the node count the launch was validated for; a group resized since is refused
    (the world size of a resumed run is the checkpoint's).

    Raises:
        RemoteError: no such group, not whole within `timeout_s`, or resized.
    """
    name = outputs.autoscaling_group
    if not name:
        return outputs
    state = wait_for_group(lambda: transport.group_state(name), timeout_s=timeout_s, interval=interval, sleep=sleep)
    if num_nodes is not None and state.desired != num_nodes:
        raise RemoteError(
            f"Auto Scaling group {name} now wants {state.desired} node(s), the launch trains on {num_nodes}; "
            "set its desired capacity back (trainer-count) or start a new run"
        )
    nodes = ", ".join(f"{m.instance_id} ({m.private_ip})" for m in state.members)
    log.info("nodes of Auto Scaling group %s, by rank: %s", name, nodes)
    return replace(
        outputs,
        instance_ids=tuple(m.instance_id for m in state.members),
        private_ips=tuple(m.private_ip for m in state.members),
    )


def capacity_block_left(outputs: StackOutputs, now: datetime | None = None) -> timedelta | None:
    """Time left until the stack's Capacity Block ends; None when the stack names no end."""
    if outputs.capacity_block_end is None:
        return None
    return outputs.capacity_block_end - (now or datetime.now(UTC))


def describe_capacity_block(outputs: StackOutputs, now: datetime | None = None) -> str | None:
    """`Capacity Block ends at ... (in 3:10:00)`, or None without an end time."""
    left = capacity_block_left(outputs, now)
    if left is None:
        return None
    end = outputs.capacity_block_end.isoformat().replace("+00:00", "Z")
    when = f"in {str(left).split('.')[0]}" if left > timedelta(0) else "already over"
    return (
        f"the training nodes' Capacity Block ends at {end} ({when}); EC2 starts terminating its "
        "instances 30 minutes before"
    )


def check_capacity_block(
    outputs: StackOutputs, now: datetime | None = None, margin: timedelta = CAPACITY_BLOCK_MARGIN
) -> None:
    """Refuse a (re)launch into a Capacity Block that ends within `margin`.

    Raises:
        RemoteError: naming the end time, what is left and the margin.
    """
    left = capacity_block_left(outputs, now)
    if left is not None and left < margin:
        raise RemoteError(
            f"{describe_capacity_block(outputs, now)}: less than {int(margin.total_seconds() // 60)} minutes "
            "left, so no training is launched into it; the checkpoints stay in S3: resume with --resume "
            "in a new block (set trainer-capacity-block-end and the reservation, `pulumi up`)"
        )


def relaunch_nodes(
    transport: Nodes,
    outputs: StackOutputs,
    *,
    timeout_s: float = DEFAULT_FLEET_TIMEOUT_S,
    interval: float = 10.0,
) -> StackOutputs:
    """The nodes of a `--max-restarts` relaunch: the Capacity Block still has time, the group is
    whole again (a replacement has a new id and IP), every node takes commands.

    Raises:
        RemoteError: the block ends too soon, the group is not whole in time or was resized, or
            a node of a stack without a group is gone (`NodeTransport.check_nodes`).
    """
    check_capacity_block(outputs)
    nodes = discover(transport, outputs, timeout_s=timeout_s, interval=interval, num_nodes=outputs.num_nodes)
    transport.check_nodes(nodes)
    return nodes


def launch_nodes(
    transport: Callable[[], Nodes], outputs: StackOutputs, *, timeout_s: float, interval: float
) -> StackOutputs:
    """The nodes of a new launch: the group's members now (`transport()` made only for a group
    stack); logs the Capacity Block's end. Raises RemoteError as `discover`."""
    if outputs.autoscaling_group:
        outputs = discover(transport(), outputs, timeout_s=timeout_s, interval=interval)
    if block := describe_capacity_block(outputs):
        log.info("%s", block)
    return outputs


def plan_lines(outputs: StackOutputs) -> list[str]:
    """What `--dry-run` prints about where the nodes come from and until when."""
    lines = []
    if outputs.autoscaling_group:
        lines.append(
            f"nodes: Auto Scaling group {outputs.autoscaling_group}'s members now (listed again for a restart)"
        )
    if block := describe_capacity_block(outputs):
        lines.append(block)
    return lines


def restart_nodes(
    transport: Nodes, outputs: StackOutputs, *, restart: int, restarts: int, timeout_s: float, interval: float
) -> StackOutputs | None:
    """`relaunch_nodes` for restart `restart` of `restarts`; None (logged) when it cannot be launched."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return relaunch_nodes(transport, outputs, timeout_s=timeout_s, interval=interval)
    except (RemoteError, ClientError, BotoCoreError) as e:
        log.error("restart %d of %d not launched: %s", restart, restarts, e)
        return None


def send_errors() -> tuple[type[Exception], ...]:
    """What a transport's `send` raises for a node that cannot take a command (SSM:
    `InvalidInstanceId` for an instance terminated since it was listed)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return RemoteError, ClientError, BotoCoreError


def cancel_sent(transport: Nodes, outputs: StackOutputs, command_ids: Sequence[str]) -> None:
    """Cancel the commands of an attempt that could not be sent to every node (best effort)."""
    for rank, command_id in enumerate(command_ids):
        iid = outputs.instance_ids[rank]
        try:
            transport.cancel(command_id, iid)
        except send_errors() as e:
            log.warning("node %d (%s): cancelling command %s failed (%s)", rank, iid, command_id, e)
