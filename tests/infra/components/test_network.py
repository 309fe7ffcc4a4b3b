"""Network on its own under mocks: private subnets, endpoints, tight security groups, flow logs."""

from __future__ import annotations

import pytest

from infra.builders.netplan import ZonePlan
from infra.components.network import Network, NetworkArgs
from infra.tools.offline import run
from tests.infra import checks
from tests.infra.components.support import TAGS


def network_run(**overrides):
    args = dict(
        vpc_cidr="10.42.0.0/16",
        zones=ZonePlan(("us-east-1b", "us-east-1a"), "us-east-1b"),
        region="us-east-1",
        serving_port=8000,
        serving_allowed_cidrs=("10.42.0.0/16", "172.16.0.0/12"),
        flow_log_bucket_arn="arn:aws:s3:::logs",
        tags=TAGS,
        interface_endpoints=("ssm", "ssmmessages", "ec2messages"),
    )
    return run(lambda: {"network": Network("network", NetworkArgs(**{**args, **overrides}))})


@pytest.mark.parametrize("egress", [False, True], ids=["private-only", "with-egress"])
def test_network_is_private_with_endpoints_and_tight_groups(egress):
    result = network_run(egress_enabled=egress)
    for check in (
        checks.no_internet_ingress,
        checks.training_group_isolated,
        checks.default_group_empty,
        checks.no_public_ips,
        checks.tags_present,
    ):
        assert check(result) == [], check.__name__
    (flow_log,) = result.of_type(checks.FLOW_LOG)
    assert flow_log.inputs["logDestination"] == "arn:aws:s3:::logs/vpc-flow-logs/"
    endpoints = {
        e.inputs["serviceName"]: e.inputs["vpcEndpointType"] for e in result.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    }
    assert endpoints == {
        "com.amazonaws.us-east-1.s3": "Gateway",
        **{f"com.amazonaws.us-east-1.{s}": "Interface" for s in ("ssm", "ssmmessages", "ec2messages")},
    }
    serving_sg, lb_sg = result.named("network-serving-sg").id, result.named("network-lb-sg").id
    lb_rules = [r.inputs for r in result.of_type(checks.INGRESS) if r.inputs["securityGroupId"] == lb_sg]
    assert sorted((r["ipProtocol"], r["fromPort"], r["toPort"], r["cidrIpv4"]) for r in lb_rules) == [
        ("tcp", 8000, 8000, "10.42.0.0/16"),
        ("tcp", 8000, 8000, "172.16.0.0/12"),
    ]
    # The hosts take the inference port from the load balancer's group only, from no range.
    serving_rules = [r.inputs for r in result.of_type(checks.INGRESS) if r.inputs["securityGroupId"] == serving_sg]
    assert [(r["fromPort"], r.get("referencedSecurityGroupId"), r.get("cidrIpv4")) for r in serving_rules] == [
        (8000, lb_sg, None)
    ]
    lb_egress = [
        (r.inputs["fromPort"], r.inputs.get("referencedSecurityGroupId"))
        for r in result.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
        if r.inputs["securityGroupId"] == lb_sg
    ]
    assert lb_egress == [(8000, serving_sg)]
    internet = {"aws:ec2/natGateway:NatGateway", "aws:ec2/internetGateway:InternetGateway", "aws:ec2/eip:Eip"}
    present = {r.type for r in result.resources} & internet
    assert present == (internet if egress else set())
    tiers = sorted(s.inputs["tags"]["tier"] for s in result.of_type(checks.SUBNET))
    assert tiers == (["private", "private", "public"] if egress else ["private", "private"])
    egress_cidrs = {
        r.inputs.get("cidrIpv4") for r in result.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
    }
    assert ("0.0.0.0/0" in egress_cidrs) == egress


def test_training_subnet_is_in_the_training_zone():
    result = network_run()
    (subnet,) = [s for s in result.of_type(checks.SUBNET) if s.inputs["availabilityZone"] == "us-east-1b"]
    assert result.outputs["network"].training_subnet_id is not None
    assert subnet.inputs["cidrBlock"] == "10.42.0.0/19"


def test_grpc_port_is_open_to_exactly_the_http_ports_sources_with_a_description():
    result = network_run(serving_grpc_port=8001)
    serving_sg, lb_sg = result.named("network-serving-sg").id, result.named("network-lb-sg").id
    from_lb = [r.inputs for r in result.of_type(checks.INGRESS) if r.inputs["securityGroupId"] == serving_sg]
    assert sorted((r["fromPort"], r["referencedSecurityGroupId"]) for r in from_lb) == [(8000, lb_sg), (8001, lb_sg)]
    rules = [r.inputs for r in result.of_type(checks.INGRESS) if r.inputs["securityGroupId"] == lb_sg]
    by_port = {port: sorted(r["cidrIpv4"] for r in rules if r["fromPort"] == port) for port in (8000, 8001)}
    assert by_port[8001] == by_port[8000] == ["10.42.0.0/16", "172.16.0.0/12"]
    assert len(rules) == 4 and all(r["ipProtocol"] == "tcp" and r["toPort"] == r["fromPort"] for r in rules)
    grpc = [r for r in rules if r["fromPort"] == 8001]
    assert all("gRPC" in r["description"] and r["cidrIpv4"] in r["description"] for r in grpc)
    assert checks.no_internet_ingress(result) == []


@pytest.mark.parametrize("egress", [False, True], ids=["private-only", "with-egress"])
def test_internet_egress_is_https_and_http_for_the_mirrors_only_with_egress(egress):
    result = network_run(egress_enabled=egress)
    groups = {result.named(f"network-{role}-sg").id: role for role in ("training", "serving", "lb", "endpoints")}
    to_internet = sorted(
        (groups[r.inputs["securityGroupId"]], r.inputs["ipProtocol"], r.inputs["fromPort"], r.inputs["toPort"])
        for r in result.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
        if r.inputs.get("cidrIpv4") == "0.0.0.0/0"
    )
    expected = [(role, "tcp", port, port) for role in ("serving", "training") for port in (80, 443)]
    assert to_internet == (expected if egress else [])
