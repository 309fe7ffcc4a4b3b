"""Serving on its own under mocks: the token in SSM, the server unit, the AMI per host kind."""

from __future__ import annotations

from infra.components.serving import Serving, ServingArgs
from infra.config.catalog import CATALOG
from infra.tools.offline import StratusMocks, run
from tests.infra import checks
from tests.infra.components.support import KEY, TAGS


def serving_run(instance_type: str, mocks=None, **overrides):
    args = dict(
        instance_type=CATALOG[instance_type],
        subnet_id="subnet-1",
        security_group_id="sg-1",
        instance_profile_name="server-profile",
        key_arn=KEY,
        token_parameter_name="/stratus/dev/serving-token",
        models_bucket="stratus-dev-models-x",
        model_name="mlp-binary",
        port=8000,
        region="us-east-1",
        tags=TAGS,
    )

    def program():
        serving = Serving("serving", ServingArgs(**{**args, **overrides}))
        return {"s": serving, "private_ip": serving.private_ip, "grpc_target": serving.grpc_target}

    return run(program, mocks=mocks)


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
    assert (
        '-m runtime serve --host "$PRIVATE_IP" --repo s3://stratus-dev-models-x/models --model mlp-binary '
        "--port 8000 --token-ssm-parameter /stratus/dev/serving-token"
    ) in text
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


def test_serving_host_with_grpc_passes_the_port_and_exports_its_target():
    result = serving_run("c7i.xlarge", grpc_port=8001)
    text = result.named("serving-host").inputs["userData"]
    assert "--port 8000 --grpc-port 8001 --token-ssm-parameter /stratus/dev/serving-token" in text
    assert result.outputs["grpc_target"] == f"{result.outputs['private_ip']}:8001"
    off = serving_run("c7i.xlarge")
    assert "--grpc-port" not in off.named("serving-host").inputs["userData"]
    assert off.outputs["grpc_target"] is None
