"""Serving on its own under mocks: token and TLS key in SSM, the load balancer, the host group."""

from __future__ import annotations

import base64

import pytest

from infra.components.serving import Serving, ServingArgs
from infra.components.tls import private_dns_wildcard, server_dns_names
from infra.config.catalog import CATALOG
from infra.tools.offline import StratusMocks, run
from tests.infra import checks
from tests.infra.components.support import KEY, TAGS

CERT, TLS_KEY = "/stratus/dev/serving-tls-cert", "/stratus/dev/serving-tls-key"


def serving_run(instance_type: str, mocks=None, **overrides):
    args = dict(
        instance_type=CATALOG[instance_type],
        vpc_id="vpc-1",
        subnet_ids=["subnet-a", "subnet-b"],
        security_group_id="sg-hosts",
        lb_security_group_id="sg-lb",
        instance_profile_name="server-profile",
        key_arn=KEY,
        token_parameter_name="/stratus/dev/serving-token",
        tls_cert_parameter_name=CERT,
        tls_key_parameter_name=TLS_KEY,
        organization="o/stratus/dev",
        models_bucket="stratus-dev-models-x",
        model_name="mlp-binary",
        port=8000,
        region="us-east-1",
        tags=TAGS,
    )

    def program():
        serving = Serving("serving", ServingArgs(**{**args, **overrides}))
        return {"s": serving, "url": serving.url, "grpc_target": serving.grpc_target, "group": serving.group_name}

    return run(program, mocks=mocks)


def _user_data(result) -> str:
    return base64.b64decode(result.named("serving-launch-template").inputs["userData"]).decode()


def test_token_and_tls_key_are_secure_strings_under_the_stack_key_and_the_certificate_a_string():
    result = serving_run("c7i.xlarge")
    params = {p.inputs["name"]: p.inputs for p in result.of_type(checks.PARAMETER)}
    assert set(params) == {"/stratus/dev/serving-token", CERT, TLS_KEY}
    for name in ("/stratus/dev/serving-token", TLS_KEY):
        assert (params[name]["type"], params[name]["keyId"]) == ("SecureString", KEY), name
    assert params["/stratus/dev/serving-token"]["value"] == result.named("serving-token").state["result"]
    assert params[TLS_KEY]["value"] == result.named("serving-tls-server-key").state["privateKeyPemPkcs8"]
    assert params[CERT]["type"] == "String" and "keyId" not in params[CERT]
    assert params[CERT]["value"] == result.named("serving-tls-server-cert").state["certPem"]
    assert checks.volume_encryption(result, keys={KEY}) == []
    # The hosts boot only once every parameter they read exists.
    names = ("serving-token-parameter", "serving-tls-key-parameter", "serving-tls-cert-parameter")
    assert {result.named(n).urn for n in names} <= set(result.named("serving-hosts").dependencies)


def test_the_ca_signs_a_server_certificate_for_the_load_balancer_and_the_hosts():
    result = serving_run("c7i.xlarge")
    ca = result.named("serving-tls-ca").inputs
    assert ca["isCaCertificate"] is True and ca["maxPathLength"] == 0 and "cert_signing" in ca["allowedUses"]
    ca_key = result.named("serving-tls-ca-key")
    assert ca["privateKeyPem"] == ca_key.state["privateKeyPem"]
    server = result.named("serving-tls-server-cert").inputs
    assert server["caCertPem"] == result.named("serving-tls-ca").state["certPem"]
    assert server["caPrivateKeyPem"] == ca_key.state["privateKeyPem"]
    assert server["allowedUses"] == ["digital_signature", "key_encipherment", "server_auth"]
    assert server["earlyRenewalHours"] < server["validityPeriodHours"]
    dns = result.named("serving-lb-nlb").state["dnsName"]
    csr = result.named("serving-tls-server-csr").inputs
    assert csr["dnsNames"] == [dns, f"*.{dns}", "*.ec2.internal"]
    assert csr["privateKeyPem"] == result.named("serving-tls-server-key").state["privateKeyPem"]
    assert len(csr["subject"]["commonName"]) <= 64
    # The CA's key reaches no parameter: it stays in Pulumi state.
    values = " ".join(p.inputs["value"] for p in result.of_type(checks.PARAMETER))
    assert ca_key.state["privateKeyPem"].splitlines()[1] not in values


@pytest.mark.parametrize(
    "region,wildcard", [("us-east-1", "*.ec2.internal"), ("eu-west-1", "*.eu-west-1.compute.internal")]
)
def test_private_names_follow_ec2s_dns_per_region(region, wildcard):
    assert private_dns_wildcard(region) == wildcard
    assert server_dns_names("lb.example", region) == ["lb.example", "*.lb.example", wildcard]


def test_internal_nlb_passes_tls_through_to_hosts_checked_over_https_on_the_readiness_route():
    result = serving_run("c7i.xlarge", grpc_port=8001, drain_seconds=300)
    nlb = result.named("serving-lb-nlb").inputs
    assert (nlb["loadBalancerType"], nlb["internal"], nlb["subnets"]) == ("network", True, ["subnet-a", "subnet-b"])
    assert nlb["securityGroups"] == ["sg-lb"]
    for label, port in (("https", 8000), ("grpc", 8001)):
        group, listener = result.named(f"serving-lb-{label}-tg"), result.named(f"serving-lb-{label}-listener")
        assert (listener.inputs["protocol"], listener.inputs["port"]) == ("TCP", port)
        assert "certificateArn" not in listener.inputs and "sslPolicy" not in listener.inputs
        assert listener.inputs["defaultActions"] == [{"type": "forward", "targetGroupArn": group.state["arn"]}]
        tg = group.inputs
        assert (tg["protocol"], tg["port"], tg["targetType"], tg["deregistrationDelay"]) == (
            "TCP",
            port,
            "instance",
            300,
        )
        health = tg["healthCheck"]
        assert (health["protocol"], health["port"], health["path"], health["matcher"]) == (
            "HTTPS",
            "8000",
            "/v2/health/ready",
            "200",
        )
    dns = result.named("serving-lb-nlb").state["dnsName"]
    assert result.outputs["url"] == f"https://{dns}:8000" and result.outputs["grpc_target"] == f"{dns}:8001"
    assert checks.internal_tls_passthrough(result) == []


def test_hosts_are_a_group_across_the_subnets_from_a_hardened_template_with_a_rolling_refresh():
    result = serving_run("c7i.xlarge", grpc_port=8001, num_hosts=3)
    group = result.named("serving-hosts").inputs
    template = result.named("serving-launch-template")
    assert (group["minSize"], group["maxSize"], group["desiredCapacity"]) == (3, 3, 3)
    assert group["vpcZoneIdentifiers"] == ["subnet-a", "subnet-b"]
    assert group["launchTemplate"] == {"id": template.id, "version": "1"}
    assert sorted(group["targetGroupArns"]) == sorted(
        result.named(f"serving-lb-{label}-tg").state["arn"] for label in ("https", "grpc")
    )
    assert (group["healthCheckType"], group["healthCheckGracePeriod"]) == ("ELB", 900)
    refresh = group["instanceRefresh"]
    assert refresh["strategy"] == "Rolling"
    assert (refresh["preferences"]["minHealthyPercentage"], refresh["preferences"]["maxHealthyPercentage"]) == (
        100,
        200,
    )
    lt = template.inputs
    assert lt["metadataOptions"] == {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1}
    assert lt["networkInterfaces"][0]["associatePublicIpAddress"] == "false"
    assert lt["networkInterfaces"][0]["securityGroups"] == ["sg-hosts"] and "keyName" not in lt
    assert lt["iamInstanceProfile"] == {"name": "server-profile"}
    (root,) = lt["blockDeviceMappings"]
    assert (root["ebs"]["encrypted"], root["ebs"]["kmsKeyId"]) == ("true", KEY)
    assert result.of_type("aws:autoscaling/policy:Policy") == []
    for check in (checks.imdsv2, checks.no_public_ips, checks.no_secret_in_user_data, checks.tags_present):
        assert check(result) == [], check.__name__
    assert checks.hosts_behind_the_load_balancer(result) == []


def test_the_server_unit_reads_the_token_and_the_tls_files_from_ssm():
    result = serving_run("c7i.xlarge", grpc_port=8001)
    text = _user_data(result)
    assert (
        '-m runtime serve --host "$PRIVATE_IP" --repo s3://stratus-dev-models-x/models --model mlp-binary '
        "--port 8000 --grpc-port 8001 --token-ssm-parameter /stratus/dev/serving-token "
        f"--tls-cert-ssm-parameter {CERT} --tls-key-ssm-parameter {TLS_KEY}"
    ) in text
    assert "Restart=on-failure" in text and "User=stratus" in text
    assert result.named("serving-token").state["result"] not in text


def test_cpu_scaling_is_opt_in_target_tracking_between_count_and_max():
    result = serving_run("c7i.xlarge", num_hosts=2, max_hosts=5, scale_cpu_percent=60.0)
    group = result.named("serving-hosts")
    assert (group.inputs["minSize"], group.inputs["maxSize"]) == (2, 5)
    assert "desiredCapacity" in group.ignore_changes  # a later `pulumi up` keeps what scaling chose
    (policy,) = result.of_type("aws:autoscaling/policy:Policy")
    assert policy.inputs["autoscalingGroupName"] == group.state["name"]
    assert policy.inputs["policyType"] == "TargetTrackingScaling"
    tracking = policy.inputs["targetTrackingConfiguration"]
    assert tracking["targetValue"] == 60.0
    assert tracking["predefinedMetricSpecification"] == {"predefinedMetricType": "ASGAverageCPUUtilization"}


def test_gpu_hosts_boot_the_deep_learning_ami_with_a_longer_grace():
    mocks = StratusMocks()
    result = serving_run("g5.xlarge", mocks, root_volume_gb=100)
    (ami_call,) = [a for t, a in mocks.invokes if t == "aws:ec2/getAmi:getAmi"]
    assert "Deep Learning" in ami_call["filters"][0]["values"][0]
    assert result.named("serving-hosts").inputs["healthCheckGracePeriod"] == 1800


def test_grpc_off_has_one_listener_and_no_target():
    result = serving_run("c7i.xlarge")
    assert [r.name for r in result.of_type(checks.LISTENER)] == ["serving-lb-https-listener"]
    assert result.outputs["grpc_target"] is None and "--grpc-port" not in _user_data(result)
