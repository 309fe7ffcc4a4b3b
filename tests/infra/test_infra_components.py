"""Each component on its own under mocks, plus the pure helpers they use."""

from __future__ import annotations

import ipaddress

import infra_checks as checks
import pytest

from infra import netplan, pricing, userdata
from infra.errors import ConfigError
from infra.iam import Iam, IamArgs
from infra.netplan import ZonePlan
from infra.network import Network, NetworkArgs
from infra.offline import StratusMocks, run
from infra.serving import Serving, ServingArgs
from infra.storage import Storage, StorageArgs, bucket_prefix
from infra.training import Training, TrainingArgs

TAGS = {"project": "stratus", "stack": "dev"}
KEY = "arn:aws:kms:us-east-1:123456789012:key/stack"


def storage_run(**overrides):
    args = dict(account_id="123456789012", partition="aws", region="us-east-1", tags=TAGS, name_prefix="stratus-dev")
    return run(lambda: {"storage": Storage("storage", StorageArgs(**{**args, **overrides}))})


def test_storage_buckets_are_encrypted_private_versioned_logged():
    result = storage_run(checkpoint_noncurrent_days=14)
    for check in (checks.bucket_encryption, checks.public_access_block, checks.tls_only_and_key_only_policy,
                  checks.kms_key_hygiene, checks.tags_present):  # fmt: skip
        assert check(result) == [], check.__name__
    buckets = {b.inputs["tags"]["purpose"]: b for b in result.of_type(checks.BUCKET)}
    assert sorted(buckets) == ["checkpoints", "datasets", "logs", "models"]
    logs_id = buckets["logs"].id
    for purpose, bucket in buckets.items():
        ownership = result.attached("aws:s3/bucketOwnershipControls:BucketOwnershipControls", bucket)
        assert [o.inputs["rule"]["objectOwnership"] for o in ownership] == ["BucketOwnerEnforced"], bucket.urn
        versioning = result.attached("aws:s3/bucketVersioning:BucketVersioning", bucket)
        assert [v.inputs["versioningConfiguration"]["status"] for v in versioning] == ["Enabled"], bucket.urn
        logging = result.attached("aws:s3/bucketLogging:BucketLogging", bucket)
        if purpose == "logs":
            assert logging == [], "the logs bucket must not log into itself"
        else:
            assert [(x.inputs["targetBucket"], x.inputs["targetPrefix"]) for x in logging] == [
                (logs_id, f"s3-access/{purpose}/")
            ], bucket.urn
        (lifecycle,) = result.attached("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", bucket)
        rules = {r["id"]: r for r in lifecycle.inputs["rules"]}
        assert rules["abort-incomplete-multipart-uploads"]["abortIncompleteMultipartUpload"] == {
            "daysAfterInitiation": 7
        }
    checkpoint_rules = result.attached("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
                                       buckets["checkpoints"])[0].inputs["rules"]  # fmt: skip
    assert {"noncurrentDays": 14} in [r.get("noncurrentVersionExpiration") for r in checkpoint_rules]


def test_storage_key_window_follows_args():
    result = storage_run(kms_deletion_window_days=7)
    assert result.of_type(checks.KEY)[0].inputs["deletionWindowInDays"] == 7


def test_bucket_prefix_is_s3_safe():
    prefix = bucket_prefix("Stratus_My.Very-Long-Stack-Name-That-Goes-On", "checkpoints")
    assert len(prefix) <= 37 and prefix.endswith("-")
    assert all(c.islower() or c.isdigit() or c == "-" for c in prefix)


def network_run(**overrides):
    args = dict(
        vpc_cidr="10.42.0.0/16", zones=ZonePlan(("us-east-1b", "us-east-1a"), "us-east-1b"), region="us-east-1",
        serving_port=8000, serving_allowed_cidrs=("10.42.0.0/16", "172.16.0.0/12"),
        flow_log_bucket_arn="arn:aws:s3:::logs", tags=TAGS, interface_endpoints=("ssm", "ssmmessages", "ec2messages"),
    )  # fmt: skip
    return run(lambda: {"network": Network("network", NetworkArgs(**{**args, **overrides}))})


@pytest.mark.parametrize("egress", [False, True], ids=["private-only", "with-egress"])
def test_network_is_private_with_endpoints_and_tight_groups(egress):
    result = network_run(egress_enabled=egress)
    for check in (checks.no_internet_ingress, checks.training_group_isolated, checks.default_group_empty,
                  checks.no_public_ips, checks.tags_present):  # fmt: skip
        assert check(result) == [], check.__name__
    (flow_log,) = result.of_type(checks.FLOW_LOG)
    assert flow_log.inputs["logDestination"] == "arn:aws:s3:::logs/vpc-flow-logs/"
    endpoints = {
        e.inputs["serviceName"]: e.inputs["vpcEndpointType"] for e in result.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    }
    assert endpoints == {"com.amazonaws.us-east-1.s3": "Gateway", **{
        f"com.amazonaws.us-east-1.{s}": "Interface" for s in ("ssm", "ssmmessages", "ec2messages")}}  # fmt: skip
    serving_sg = result.named("network-serving-sg").id
    serving_rules = [r.inputs for r in result.of_type(checks.INGRESS) if r.inputs["securityGroupId"] == serving_sg]
    assert sorted((r["ipProtocol"], r["fromPort"], r["toPort"], r["cidrIpv4"]) for r in serving_rules) == [
        ("tcp", 8000, 8000, "10.42.0.0/16"), ("tcp", 8000, 8000, "172.16.0.0/12")]  # fmt: skip
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


def test_iam_roles_trust_ec2_and_get_ssm_core():
    arns = {p: f"arn:aws:s3:::b-{p}" for p in ("datasets", "checkpoints", "models", "logs")}
    token = "arn:aws:ssm:us-east-1:1:parameter/t"
    args = IamArgs(
        bucket_arns=arns, key_arn=KEY, token_parameter_arn=token, region="us-east-1", partition="aws", tags=TAGS
    )
    result = run(lambda: {"iam": Iam("iam", args)})
    assert checks.no_wildcard_iam(result) == []
    attachments = sorted(
        a.inputs["policyArn"] for a in result.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    )
    assert attachments == ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"] * 2
    assert len(result.of_type("aws:iam/instanceProfile:InstanceProfile")) == 2


def training_run(instance_type: str, mocks=None, **overrides):
    args = dict(
        instance_type=pricing.CATALOG[instance_type], num_nodes=3, subnet_id="subnet-1", security_group_id="sg-1",
        instance_profile_arn="arn:aws:iam::1:instance-profile/t", key_arn=KEY, user_data="#!/bin/bash\n",
        region="us-east-1", tags=TAGS,
    )  # fmt: skip
    return run(lambda: {"t": Training("training", TrainingArgs(**{**args, **overrides}))}, mocks=mocks)


def test_training_nodes_get_efa_on_every_efa_card_and_spot_when_capped():
    mocks = StratusMocks()
    result = training_run("p4d.24xlarge", mocks=mocks, spot_max_price=12.5)
    (lt,) = result.of_type(checks.LT)
    interfaces = lt.inputs["networkInterfaces"]
    assert [(i["networkCardIndex"], i["deviceIndex"], i["interfaceType"]) for i in interfaces] == [
        (0, 0, "efa"), (1, 1, "efa"), (2, 1, "efa"), (3, 1, "efa")]  # fmt: skip
    assert lt.inputs["instanceMarketOptions"]["spotOptions"]["maxPrice"] == "12.5"
    (group,) = result.of_type("aws:ec2/placementGroup:PlacementGroup")
    assert group.inputs["strategy"] == "cluster" and lt.inputs["placement"]["groupName"] == group.state["name"]
    assert len(result.of_type(checks.INSTANCE)) == 3
    (ami_call,) = [a for t, a in mocks.invokes if t == "aws:ec2/getAmi:getAmi"]
    assert "Deep Learning" in ami_call["filters"][0]["values"][0] and ami_call["owners"] == ["amazon"]
    assert checks.volume_encryption(result, keys={KEY}) == []
    for check in (checks.imdsv2, checks.no_public_ips, checks.tags_present):
        assert check(result) == [], check.__name__


def test_training_without_efa_uses_one_plain_interface_and_on_demand():
    result = training_run("g5.12xlarge", scratch_volume_gb=0, ami_id="ami-0123456789abcdef0")
    (lt,) = result.of_type(checks.LT)
    assert [i.get("interfaceType") for i in lt.inputs["networkInterfaces"]] == [None]
    assert "instanceMarketOptions" not in lt.inputs
    assert lt.inputs["imageId"] == "ami-0123456789abcdef0"
    assert [m["deviceName"] for m in lt.inputs["blockDeviceMappings"]] == ["/dev/xvda"]


def serving_run(instance_type: str, mocks=None):
    args = dict(
        instance_type=pricing.CATALOG[instance_type], subnet_id="subnet-1", security_group_id="sg-1",
        instance_profile_name="server-profile", key_arn=KEY, token_parameter_name="/stratus/dev/serving-token",
        models_bucket="stratus-dev-models-x", model_name="mlp-binary", port=8000, region="us-east-1", tags=TAGS,
    )  # fmt: skip
    return run(lambda: {"s": Serving("serving", ServingArgs(**args))}, mocks=mocks)


def test_serving_host_stores_token_in_ssm_and_runs_the_server_unit():
    mocks = StratusMocks()
    result = serving_run("c7i.xlarge", mocks)
    (parameter,) = result.of_type(checks.PARAMETER)
    assert parameter.inputs["name"] == "/stratus/dev/serving-token" and parameter.inputs["keyId"] == KEY
    token = result.named("serving-token").state["result"]
    assert parameter.inputs["value"] == token
    host = result.named("serving-host")
    text = host.inputs["userData"]
    assert token not in text
    assert ("-m runtime serve --host \"$PRIVATE_IP\" --repo s3://stratus-dev-models-x/models --model mlp-binary "
            "--port 8000 --token-ssm-parameter /stratus/dev/serving-token") in text  # fmt: skip
    assert "Restart=on-failure" in text and "User=stratus" in text
    assert host.inputs["associatePublicIpAddress"] is False and host.inputs["iamInstanceProfile"] == "server-profile"
    (ami_call,) = [a for t, a in mocks.invokes if t == "aws:ec2/getAmi:getAmi"]
    assert ami_call["filters"][0]["values"] == ["al2023-ami-2023.*-x86_64"]
    assert checks.volume_encryption(result, keys={KEY}) == []
    for check in (checks.imdsv2, checks.no_secret_in_user_data, checks.tags_present):
        assert check(result) == [], check.__name__


def test_gpu_serving_host_boots_the_deep_learning_ami():
    mocks = StratusMocks()
    serving_run("g5.xlarge", mocks)
    (ami_call,) = [a for t, a in mocks.invokes if t == "aws:ec2/getAmi:getAmi"]
    assert "Deep Learning" in ami_call["filters"][0]["values"][0]


def test_subnet_plan_has_no_overlaps_and_stays_in_the_vpc():
    for cidr in ("10.42.0.0/16", "192.168.0.0/24"):
        plans = netplan.plan_subnets(cidr, ["a", "b", "c", "d"])
        nets = [ipaddress.ip_network(c) for p in plans for c in (p.private_cidr, p.public_cidr)]
        vpc = ipaddress.ip_network(cidr)
        assert all(n.subnet_of(vpc) for n in nets)
        assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])


def test_zone_choice_prefers_a_zone_offering_every_type():
    zones = ["z-a", "z-b", "z-c"]
    plan = netplan.choose_zones(zones, 2, requested=None, offering={"p4d": ["z-c", "z-b"], "c7i": zones})
    assert plan == ZonePlan(("z-b", "z-a"), "z-b")
    with pytest.raises(ConfigError, match="zones offering p5: z-a"):
        netplan.choose_zones(zones, 2, requested=None, offering={"p4d": ["z-c"], "p5": ["z-a"]})
    with pytest.raises(ConfigError, match="training-availability-zone"):
        netplan.choose_zones(zones, 2, requested="z-a", offering={"p4d": ["z-c"]})
    with pytest.raises(ConfigError, match="availability-zone-count"):
        netplan.choose_zones(zones, 4, requested=None)


def test_trainer_user_data_mounts_scratch_and_installs_the_bundle():
    text = userdata.trainer_user_data(region="us-east-1", buckets={"models": "m", "datasets": "d"}, scratch=True)
    assert "mkfs.xfs -q /dev/sdf" in text and "s3://m/runtime/stratus-runtime.tar.gz" in text
    assert "STRATUS_DATASETS_BUCKET=d" in text
    assert "/dev/sdf" not in userdata.trainer_user_data(region="us-east-1", buckets={"models": "m"}, scratch=False)
