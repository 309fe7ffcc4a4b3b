"""Training nodes from an Auto Scaling group (`runtime.remote.fleet`) against the moto server
(`aws_env`): a launch template and a group whose instances moto runs; moto, like EC2, replaces a
terminated member under a new id and IP. Capacity Block end times, and a send to a dead instance.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError

from runtime.common.options import parse_options
from runtime.contract import BUNDLE_KEY, ExitCode
from runtime.remote.command import Launch, RemoteOptions
from runtime.remote.fleet import check_capacity_block, describe_capacity_block, discover, relaunch_nodes
from runtime.remote.outputs import RemoteError, parse_outputs
from runtime.remote.transport import SsmTransport
from runtime.train.command import parse_train_options
from tests.runtime.remote.conftest import REGION
from tests.runtime.remote.test_launch import commands_of_run, run_remote


def clients():
    return {name: boto3.client(name, region_name=REGION) for name in ("ssm", "ec2", "autoscaling")}


def transport() -> SsmTransport:
    c = clients()
    return SsmTransport(c["ssm"], c["ec2"], REGION, autoscaling=c["autoscaling"])


@pytest.fixture
def group(stack):
    """A launch template and a 2-node group on moto; (its name, the stack outputs of a group stack)."""
    c = clients()
    ec2, autoscaling = c["ec2"], c["autoscaling"]
    name = f"stratus-trainers-{uuid.uuid4().hex[:8]}"
    image = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": image, "InstanceType": "g5.xlarge"}
    )
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
        MinSize=2,
        MaxSize=2,
        DesiredCapacity=2,
        VPCZoneIdentifier=subnet,
    )
    outputs, _ = stack
    # what a group-based stack exports (infra: the frozen lists are [])
    data = {**outputs, "trainer_instance_ids": [], "trainer_private_ips": [], "trainer_autoscaling_group": name}
    return name, data


def members(name: str) -> list[str]:
    found = clients()["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=[name])
    return [i["InstanceId"] for i in found["AutoScalingGroups"][0]["Instances"]]


def ips(instance_ids) -> dict[str, str]:
    resp = clients()["ec2"].describe_instances(InstanceIds=list(instance_ids))
    return {i["InstanceId"]: i["PrivateIpAddress"] for r in resp["Reservations"] for i in r["Instances"]}


def by_launch(instance_ids) -> list[str]:
    """The documented rank order: launch time, then id (moto's launch times have 1 s resolution)."""
    resp = clients()["ec2"].describe_instances(InstanceIds=list(instance_ids))
    launched = {i["InstanceId"]: i["LaunchTime"] for r in resp["Reservations"] for i in r["Instances"]}
    return sorted(instance_ids, key=lambda i: (launched[i], i))


def test_group_stack_outputs_need_no_frozen_nodes_and_bad_values_are_named(group):
    name, data = group
    out = parse_outputs(data, "f")
    assert (out.autoscaling_group, out.num_nodes, out.capacity_block_end) == (name, 0, None)
    assert parse_outputs({**data, "trainer_instance_ids": None, "trainer_private_ips": None}, "f").num_nodes == 0
    with pytest.raises(RemoteError, match="trainer_instance_ids, trainer_private_ips"):
        parse_outputs({**data, "trainer_autoscaling_group": None}, "f")  # an older stack needs them
    with pytest.raises(RemoteError, match="trainer_autoscaling_group is 3, expected a group name"):
        parse_outputs({**data, "trainer_autoscaling_group": 3}, "f")
    end = parse_outputs({**data, "trainer_capacity_block_end": "2026-12-10T11:30:00Z"}, "f").capacity_block_end
    assert end == datetime(2026, 12, 10, 11, 30, tzinfo=UTC)
    for bad in ("2026-12-10T11:30:00", "next week", 5):
        with pytest.raises(RemoteError, match=r"trainer_capacity_block_end is .* ISO-8601 time with its zone"):
            parse_outputs({**data, "trainer_capacity_block_end": bad}, "f")


def test_nodes_are_the_group_members_ranked_by_launch_time_and_a_replacement_has_a_new_id_and_ip(group):
    name, data = group
    out = discover(transport(), parse_outputs(data, "f"), timeout_s=5, interval=0.1)
    first = members(name)
    assert sorted(out.instance_ids) == sorted(first) and out.num_nodes == 2 and out.world_size == 4
    assert out.private_ips == tuple(ips(out.instance_ids)[i] for i in out.instance_ids)
    assert list(out.instance_ids) == by_launch(first)
    time.sleep(1.1)  # the replacement's launch time is later than the survivor's
    lost, kept = out.instance_ids
    clients()["ec2"].terminate_instances(InstanceIds=[lost])  # the group launches a replacement
    again = relaunch_nodes(transport(), out, timeout_s=5, interval=0.1)
    assert again.instance_ids[0] == kept and again.private_ips[0] == out.private_ips[1]  # the survivor: node 0
    new = again.instance_ids[1]
    assert new not in out.instance_ids and again.private_ips[1] not in out.private_ips
    assert again.private_ips[1] == ips([new])[new]


def test_the_wait_for_the_group_is_bounded_and_names_the_group_and_counts(group):
    name, data = group
    out = parse_outputs(data, "f")
    autoscaling = clients()["autoscaling"]
    sick = members(name)[1]
    autoscaling.set_instance_health(InstanceId=sick, HealthStatus="Unhealthy")
    start = time.monotonic()
    with pytest.raises(RemoteError) as e:
        discover(transport(), out, timeout_s=0.5, interval=0.1)
    assert time.monotonic() - start < 5
    message = str(e.value)
    assert f"Auto Scaling group {name}: 1 of 2 node(s) in service; not ready: {sick} InService/Unhealthy" in message
    assert "after waiting 0 s (--fleet-timeout)" in message and "describe-scaling-activities" in message

    def replace_the_sick_one(_seconds: float) -> None:  # EC2 ends it; the group launches a new one
        clients()["ec2"].terminate_instances(InstanceIds=[sick])

    whole = discover(transport(), out, timeout_s=60, interval=0.1, sleep=replace_the_sick_one)
    assert whole.num_nodes == 2 and sick not in whole.instance_ids

    with pytest.raises(RemoteError, match=r"now wants 3 node\(s\), the launch trains on 2"):
        autoscaling.update_auto_scaling_group(AutoScalingGroupName=name, MaxSize=3, DesiredCapacity=3)
        relaunch_nodes(transport(), whole, timeout_s=5, interval=0.1)
    with pytest.raises(RemoteError, match="--fleet-timeout -1.0: use 0 or more seconds"):
        parse_options(RemoteOptions, ["--outputs-file", "f.json", "--fleet-timeout", "-1"], prog="t")
    with pytest.raises(RemoteError, match="Auto Scaling group nope .* does not exist.*pulumi refresh"):
        discover(transport(), parse_outputs({**data, "trainer_autoscaling_group": "nope"}, "f"), timeout_s=0)


def test_a_launch_on_a_group_stack_plans_on_its_members(group, aws_env, tmp_path):
    name, data = group
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(data))
    result = run_remote(aws_env, "--outputs-file", str(path), "--dry-run", "--", "--run-name", "asg1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"nodes of Auto Scaling group {name}, by rank: " in result.stdout
    assert f"nodes: Auto Scaling group {name}'s members now" in result.stdout
    for rank, iid in enumerate(by_launch(members(name))):
        assert f"node {rank} ({iid}, {ips([iid])[iid]}): AWS-RunShellScript commands:" in result.stdout
    result = run_remote(aws_env, "--outputs-file", str(path), "--", "--run-name", "asg1", "--set", "max_steps=2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(commands_of_run("asg1")) == 2


def test_capacity_block_end_is_printed_and_no_launch_starts_within_35_minutes_of_it(group, aws_env, tmp_path):
    name, data = group
    now = datetime(2026, 12, 10, 9, 0, tzinfo=UTC)
    out = parse_outputs({**data, "trainer_capacity_block_end": "2026-12-10T11:30:00Z"}, "f")
    assert describe_capacity_block(out, now) == (
        "the training nodes' Capacity Block ends at 2026-12-10T11:30:00Z (in 2:30:00); "
        "EC2 starts terminating its instances 30 minutes before"
    )
    check_capacity_block(out, now)
    check_capacity_block(out, now + timedelta(minutes=114))  # 36 minutes left
    with pytest.raises(RemoteError, match=r"\(in 0:34:00\).*less than 35 minutes left.*--resume"):
        check_capacity_block(out, now + timedelta(minutes=116))

    soon = (datetime.now(UTC) + timedelta(minutes=20)).replace(microsecond=0)
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({**data, "trainer_capacity_block_end": soon.isoformat()}))
    result = run_remote(aws_env, "--outputs-file", str(path), "--dry-run", "--", "--run-name", "cb1")
    assert result.returncode == 0 and f"Capacity Block ends at {soon.isoformat().replace('+00:00', 'Z')}" in (
        result.stdout
    )
    result = run_remote(aws_env, "--outputs-file", str(path), "--", "--run-name", "cb1", "--set", "max_steps=2")
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    assert "less than 35 minutes left, so no training is launched" in result.stdout
    assert commands_of_run("cb1") == []
    s3 = boto3.client("s3", region_name=REGION)
    assert s3.list_objects_v2(Bucket=data["models_bucket"], Prefix=BUNDLE_KEY)["KeyCount"] == 0


class TerminatedOnSend(SsmTransport):
    """SSM as AWS answers a command to an instance terminated since it was listed (moto accepts
    any id): `InvalidInstanceId`."""

    def __init__(self, dead: str):
        c = clients()
        super().__init__(c["ssm"], c["ec2"], REGION, autoscaling=c["autoscaling"])
        self.dead, self.cancelled = dead, []

    def send(self, instance_id, lines, *, comment, timeout_s):
        if instance_id == self.dead:
            error = {"Error": {"Code": "InvalidInstanceId", "Message": "Instances not in a valid state for account"}}
            raise ClientError(error, "SendCommand")
        return super().send(instance_id, lines, comment=comment, timeout_s=timeout_s)

    def cancel(self, command_id, instance_id):
        self.cancelled.append(instance_id)
        super().cancel(command_id, instance_id)


def test_a_node_that_cannot_take_the_command_is_a_failed_attempt_not_a_traceback(group, aws_env, tmp_path, caplog):
    name, data = group
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(data))
    opts = parse_options(RemoteOptions, ["--outputs-file", str(path), "--poll-interval", "0.05"], prog="t")
    launch = Launch(opts, parse_train_options(["--run-name", "dead1", "--set", "max_steps=2"]))
    node0, node1 = launch.outputs.instance_ids
    dead = TerminatedOnSend(node1)
    code = launch.attempt(dead, launch.job("0" * 64))
    assert code == ExitCode.FAILED
    assert f"node 1 ({node1}) cannot take the command" in caplog.text and "InvalidInstanceId" in caplog.text
    assert dead.cancelled == [node0]  # the command node 0 already had is stopped
