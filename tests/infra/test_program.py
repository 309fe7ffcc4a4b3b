"""The whole program: outputs, zone choice, budget guard, availability."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest

from infra.config.catalog import CATALOG
from infra.config.cost import estimate_cost
from infra.config.errors import BudgetExceededError, ConfigError
from infra.config.stack import parse_config
from infra.tools.offline import StratusMocks, run_program
from runtime.contract import STACK_OUTPUTS
from tests.infra.support import example_config

OUTPUTS = {
    "region",
    "kms_key_arn",
    "datasets_bucket",
    "checkpoints_bucket",
    "models_bucket",
    "logs_bucket",
    "trainer_instance_ids",
    "trainer_private_ips",
    "trainer_slots_per_node",
    "serving_instance_id",
    "serving_private_ip",
    "serving_url",
    "serving_grpc_target",
    "serving_token_parameter",
    "estimated_hourly_usd",
    "trainer_autoscaling_group",
    "egress_enabled",
    "serving_ca_certificate",
    "serving_tls_cert_parameter",
    "serving_tls_key_parameter",
    "serving_autoscaling_group",
    "trainer_capacity_block_end",
}


def test_exports_exactly_the_architecture_outputs(example_run):
    out = example_run.outputs
    assert set(out) == OUTPUTS
    assert out["region"] == "us-east-1"
    assert out["kms_key_arn"] == example_run.of_type("aws:kms/key:Key")[0].state["arn"]
    # The nodes are a group: its members are listed at launch time, never frozen in an output.
    assert out["trainer_instance_ids"] == out["trainer_private_ips"] == []
    assert out["trainer_autoscaling_group"] == example_run.named("training-nodes").state["name"]
    assert out["egress_enabled"] is False
    assert out["trainer_slots_per_node"] == CATALOG["g5.12xlarge"].gpus == 4
    nlb = example_run.named("serving-lb-nlb").state["dnsName"]
    assert out["serving_url"] == f"https://{nlb}:8000"
    assert out["serving_grpc_target"] == f"{nlb}:8001"
    # No single serving host any more: the group lists them.
    assert out["serving_instance_id"] is None and out["serving_private_ip"] is None
    assert out["serving_autoscaling_group"] == example_run.named("serving-hosts").state["name"]
    assert out["serving_ca_certificate"] == example_run.named("serving-tls-ca").state["certPem"]
    assert out["serving_token_parameter"] == "/organization/stratus/dev/serving-token"
    assert out["serving_tls_cert_parameter"] == "/organization/stratus/dev/serving-tls-cert"
    assert out["serving_tls_key_parameter"] == "/organization/stratus/dev/serving-tls-key"
    for purpose in ("datasets", "checkpoints", "models", "logs"):
        assert out[f"{purpose}_bucket"].startswith(f"stratus-dev-{purpose}-")


def test_grpc_off_opens_no_grpc_port_and_exports_a_null_target(example_run, efa_spot_run):
    def serving_ports(run):
        sg = run.named("network-lb-sg").id
        ingress = run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        return sorted({r.inputs["fromPort"] for r in ingress if r.inputs["securityGroupId"] == sg})

    assert serving_ports(example_run) == [8000, 8001]
    assert serving_ports(efa_spot_run) == [8000]
    assert efa_spot_run.outputs["serving_grpc_target"] is None
    assert efa_spot_run.outputs["egress_enabled"] is True
    assert (
        "--grpc-port" not in base64.b64decode(efa_spot_run.named("serving-launch-template").inputs["userData"]).decode()
    )
    assert [r.name for r in efa_spot_run.of_type("aws:lb/listener:Listener")] == ["serving-lb-https-listener"]


def test_outputs_are_the_contract_outputs_in_its_order(example_run):
    assert set(STACK_OUTPUTS) == OUTPUTS
    # The contract's outputs first, in its order; the serving half's after them.
    assert list(example_run.outputs) == list(STACK_OUTPUTS)


def test_no_output_carries_the_serving_token_or_a_private_key(example_run):
    token = example_run.named("serving-token").state["result"]
    assert token not in repr(example_run.outputs)
    for key in example_run.of_type("tls:index/privateKey:PrivateKey"):
        body = key.state["privateKeyPem"].splitlines()[1]
        assert body not in repr(example_run.outputs), key.urn


def test_estimated_cost_output_matches_the_estimator(example_run):
    cfg = parse_config({k.split(":", 1)[1] if k.startswith("stratus:") else k: v for k, v in example_config().items()})
    assert Decimal(str(example_run.outputs["estimated_hourly_usd"])) == estimate_cost(cfg).total_usd_per_hour


def test_every_resource_is_tagged_with_this_project_and_stack(example_run):
    tagged = [r for r in example_run.resources if r.inputs.get("tags")]
    assert len(tagged) > 30
    for r in tagged:
        tags = r.inputs["tags"]
        if isinstance(tags, list):  # an Auto Scaling group's tag blocks
            tags = {t["key"]: t["value"] for t in tags}
        assert (tags["project"], tags["stack"]) == ("stratus", "dev"), r.urn


def test_budget_guard_fails_with_the_breakdown_when_exceeded():
    with pytest.raises(BudgetExceededError) as raised:
        run_program(example_config(**{"max-hourly-usd": 5}))
    message = str(raised.value)
    assert "config `stratus:max-hourly-usd`" in message and "above the cap of 5 USD/h" in message
    assert "training node g5.12xlarge (on-demand)" in message and "total" in message


def test_budget_guard_passes_when_the_estimate_is_under_the_cap():
    result = run_program(example_config(**{"max-hourly-usd": 12}))
    assert result.outputs["estimated_hourly_usd"] <= 12


def test_training_zone_follows_live_offerings():
    mocks = StratusMocks(offerings={"g5.12xlarge": ["us-east-1c", "us-east-1d"]})
    result = run_program(example_config(), mocks=mocks)
    zones = sorted(s.inputs["availabilityZone"] for s in result.of_type("aws:ec2/subnet:Subnet"))
    assert zones == ["us-east-1a", "us-east-1c"]
    group = result.named("training-nodes")
    training_subnet = next(
        s for s in result.of_type("aws:ec2/subnet:Subnet") if s.inputs["availabilityZone"] == "us-east-1c"
    )
    assert group.inputs["vpcZoneIdentifiers"] == [training_subnet.id]


def test_requested_zone_without_the_type_fails_naming_the_zones_that_offer_it():
    mocks = StratusMocks(offerings={"g5.12xlarge": ["us-east-1c"]})
    with pytest.raises(ConfigError, match="use one of us-east-1c"):
        run_program(example_config(**{"training-availability-zone": "us-east-1a"}), mocks=mocks)


@pytest.mark.parametrize(
    "key,instance_type",
    [("serving-instance-type", "c7i.xlarge"), ("trainer-instance-type", "g5.12xlarge")],
    ids=["serving-type", "trainer-type"],
)
def test_type_offered_in_no_zone_fails_naming_the_key(key, instance_type):
    # The key is the one that chose the type: a serving type offered nowhere is not the trainer's fault.
    mocks = StratusMocks(offerings={instance_type: []})
    with pytest.raises(ConfigError, match=f"{key}.*zones offering {instance_type}: none"):
        run_program(example_config(), mocks=mocks)


def test_live_lookup_can_be_switched_off():
    mocks = StratusMocks(offerings={"g5.12xlarge": []})
    run_program(example_config(**{"zone-offerings-lookup": False}), mocks=mocks)
    assert not [t for t, _ in mocks.invokes if t.endswith("getInstanceTypeOfferings")]


def test_the_program_runs_after_an_asyncio_run_left_no_current_loop():
    """`stratus plan` in a process that already ran an event loop to completion (asyncio.run leaves
    none current): the offline run sets its own instead of failing inside Pulumi's runtime."""
    import asyncio

    async def nothing() -> None:
        return None

    asyncio.run(nothing())
    with pytest.raises(RuntimeError, match="no current event loop"):
        asyncio.get_event_loop()  # the state the plan must cope with
    run = run_program(example_config())
    assert "serving_url" in run.outputs


def test_serving_keys_reach_the_group_the_target_groups_and_the_scaling_policy():
    run = run_program(
        example_config(
            **{
                "serving-count": 3,
                "serving-max-count": 6,
                "serving-scale-cpu-percent": 55,
                "serving-drain-seconds": 300,
                "max-hourly-usd": None,
            }
        )
    )
    group = run.named("serving-hosts").inputs
    assert (group["minSize"], group["desiredCapacity"], group["maxSize"]) == (3, 3, 6)
    assert len(group["vpcZoneIdentifiers"]) == 2  # every private subnet of the stack's zones
    for label in ("https", "grpc"):
        assert run.named(f"serving-lb-{label}-tg").inputs["deregistrationDelay"] == 300
    (policy,) = run.of_type("aws:autoscaling/policy:Policy")
    assert policy.inputs["targetTrackingConfiguration"]["targetValue"] == 55


def _key_statements(run):
    import json

    return {s["Sid"]: s for s in json.loads(run.named("storage-key").inputs["policy"])["Statement"]}


def test_the_stack_key_lets_auto_scaling_encrypt_the_groups_volumes(example_run):
    role = "arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"
    statements = _key_statements(example_run)
    use, grant = statements["AutoScalingUsesKeyForVolumes"], statements["AutoScalingAttachesVolumes"]
    assert use["Principal"] == grant["Principal"] == {"AWS": role}
    assert {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey"} <= set(
        use["Action"]
    )
    assert grant["Action"] == ["kms:CreateGrant"]
    assert grant["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}
    # the account has the role: the stack does not create it
    assert example_run.of_type("aws:iam/serviceLinkedRole:ServiceLinkedRole") == []


def test_an_account_without_the_auto_scaling_role_gets_it_before_the_key():
    run = run_program(example_config(), mocks=StratusMocks(autoscaling_role=False))
    (role,) = run.of_type("aws:iam/serviceLinkedRole:ServiceLinkedRole")
    assert role.inputs["awsServiceName"] == "autoscaling.amazonaws.com"
    assert role.urn in run.named("storage-key").dependencies
    assert "AutoScalingUsesKeyForVolumes" in _key_statements(run)


def test_a_capacity_block_stack_exports_the_block_end_for_the_launcher(example_run):
    assert example_run.outputs["trainer_capacity_block_end"] is None  # on-demand: no block
    config = example_config(
        **{
            "trainer-instance-type": "p5.48xlarge",
            "trainer-count": 2,
            "trainer-market": "capacity-block",
            "trainer-capacity-reservation-id": "cr-0a1b2c3d4e5f60718",
            "trainer-capacity-block-end": "2026-12-10T12:30:00+01:00",
            "training-availability-zone": "us-east-1a",
            "max-hourly-usd": None,
        }
    )
    run = run_program(config)
    assert run.outputs["trainer_capacity_block_end"] == "2026-12-10T11:30:00+00:00"  # UTC, as the launcher parses
