"""Security checks on the real program (both stack shapes) and, per check, a broken copy."""

from __future__ import annotations

import base64
import json

import pytest

from tests.infra import checks
from tests.infra.support import broken, without


@pytest.mark.parametrize("check", checks.ALL_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("shape", ["example_run", "efa_spot_run"])
def test_program_passes_check(request, shape, check):
    run = request.getfixturevalue(shape)
    assert check(run) == []


def _set(path: list, value):
    def mutate(resource, _run):
        target = resource.inputs
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _edit_json(field: str, edit):
    def mutate(resource, _run):
        document = json.loads(resource.inputs[field])
        edit(document)
        resource.inputs[field] = json.dumps(document)

    return mutate


def _drop_statement(sid: str):
    def edit(document):
        document["Statement"] = [s for s in document["Statement"] if s.get("Sid") != sid]

    return _edit_json("policy", edit)


def _leak(secret):
    """Put a real generated secret into the (base64) user data of a launch template: the leak the check is about."""

    def mutate(resource, run):
        text = base64.b64decode(resource.inputs["userData"]).decode() + f"\nSECRET={secret(run)}\n"
        resource.inputs["userData"] = base64.b64encode(text.encode()).decode()

    return mutate


_leak_token = _leak(lambda run: run.named("serving-token").state["result"])
# The key without its PEM armour: the check must know the generated key, not only the pattern.
_leak_tls_key = _leak(lambda run: run.named("serving-tls-server-key").state["privateKeyPemPkcs8"].split("\n")[1])


def _cert_with_its_key(resource, run):
    key = run.named("serving-tls-server-key").state["privateKeyPemPkcs8"]
    resource.inputs["value"] += key


OTHER_KEY = "arn:aws:kms:us-east-1:123456789012:key/other"
BREAKS = [
    (
        "bucket_encryption",
        "storage-models-encryption",
        _set(["rules", 0, "applyServerSideEncryptionByDefault", "sseAlgorithm"], "AES256"),
    ),
    (
        "bucket_encryption",
        "storage-logs-encryption",
        _set(["rules", 0, "applyServerSideEncryptionByDefault", "kmsMasterKeyId"], OTHER_KEY),
    ),
    ("bucket_encryption", "storage-datasets-encryption", _set(["rules", 0, "bucketKeyEnabled"], False)),
    ("bucket_encryption", "storage-datasets-encryption", None),
    ("public_access_block", "storage-logs-public-access-block", _set(["restrictPublicBuckets"], False)),
    ("public_access_block", "storage-models-public-access-block", None),
    ("tls_only_and_key_only_policy", "storage-checkpoints-policy", _drop_statement("DenyInsecureTransport")),
    ("tls_only_and_key_only_policy", "storage-datasets-policy", _drop_statement("DenyNonKmsEncryption")),
    ("tls_only_and_key_only_policy", "storage-models-policy", _drop_statement("DenyOtherKmsKeys")),
    ("tls_only_and_key_only_policy", "storage-models-policy", _drop_statement("DenyKmsWithoutKeyId")),
    ("volume_encryption", "training-launch-template", _set(["blockDeviceMappings", 0, "ebs", "encrypted"], "false")),
    (
        "volume_encryption",
        "serving-launch-template",
        _set(["blockDeviceMappings", 0, "ebs", "kmsKeyId"], "alias/aws/ebs"),
    ),
    ("volume_encryption", "serving-token-parameter", _set(["type"], "String")),
    ("volume_encryption", "serving-tls-key-parameter", _set(["keyId"], OTHER_KEY)),
    ("volume_encryption", "serving-tls-key-parameter", _set(["type"], "String")),
    ("volume_encryption", "serving-tls-cert-parameter", _cert_with_its_key),
    ("imdsv2", "training-launch-template", _set(["metadataOptions", "httpTokens"], "optional")),
    ("imdsv2", "training-launch-template", _set(["metadataOptions", "httpPutResponseHopLimit"], 2)),
    ("imdsv2", "serving-launch-template", _set(["metadataOptions", "httpTokens"], "optional")),
    ("no_internet_ingress", "network-lb-inference-0", _set(["cidrIpv4"], "0.0.0.0/0")),
    ("no_internet_ingress", "network-serving-grpc-from-lb", _set(["cidrIpv4"], "0.0.0.0/0")),
    (
        "no_internet_ingress",
        "network-endpoints-sg",
        _set(["ingress"], [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "ipv6CidrBlocks": ["::/0"]}]),
    ),
    ("no_internet_ingress", "network-endpoints-https", _set(["fromPort"], 22)),
    ("training_group_isolated", "network-training-from-self", _set(["cidrIpv4"], "10.42.0.0/16")),
    (
        "default_group_empty",
        "network-default-sg",
        _set(["ingress"], [{"protocol": "-1", "fromPort": 0, "toPort": 0, "self": True}]),
    ),
    ("flow_logs", "network-flow-log", _set(["trafficType"], "REJECT")),
    ("flow_logs", "network-flow-log", None),
    ("no_public_ips", "training-launch-template", _set(["networkInterfaces", 0, "associatePublicIpAddress"], "true")),
    ("no_public_ips", "network-private-us-east-1a", _set(["mapPublicIpOnLaunch"], True)),
    (
        "no_public_ips",
        "serving-launch-template",
        _set(["networkInterfaces", 0, "associatePublicIpAddress"], "true"),
    ),
    (
        "no_wildcard_iam",
        "iam-trainer-policy",
        _edit_json("policy", lambda d: d["Statement"][0].update(Action=["s3:*"])),
    ),
    ("no_wildcard_iam", "iam-server-policy", _edit_json("policy", lambda d: d["Statement"][1].update(Resource="*"))),
    (
        "no_wildcard_iam",
        "iam-server-role",
        _edit_json("assumeRolePolicy", lambda d: d["Statement"][0].update(Principal={"AWS": "*"})),
    ),
    ("no_wildcard_iam", "storage-key", _edit_json("policy", lambda d: d["Statement"][1].update(Principal="*"))),
    ("no_secret_in_user_data", "serving-launch-template", _leak_token),
    ("no_secret_in_user_data", "serving-launch-template", _leak_tls_key),
    (
        "no_secret_in_user_data",
        "training-launch-template",
        _set(["userData"], base64.b64encode(b"#!/bin/bash\nexport KEY=AKIAABCDEFGHIJKLMNOP\n").decode()),
    ),
    ("tags_present", "network-vpc", _set(["tags"], {"project": "stratus", "stack": "dev"})),
    ("tags_present", "iam-trainer-profile", _set(["tags"], None)),
    ("kms_key_hygiene", "storage-key", _set(["enableKeyRotation"], False)),
    ("kms_key_hygiene", "storage-key", _set(["deletionWindowInDays"], 60)),
    ("tags_present", "serving-hosts", _set(["tags"], [{"key": "project", "value": "stratus"}])),
    ("internal_tls_passthrough", "serving-lb-nlb", _set(["internal"], False)),
    ("internal_tls_passthrough", "serving-lb-https-listener", _set(["protocol"], "TLS")),
    ("internal_tls_passthrough", "serving-lb-grpc-tg", _set(["healthCheck", "protocol"], "TCP")),
    ("internal_tls_passthrough", "serving-lb-https-tg", _set(["protocol"], "TLS")),
    ("hosts_behind_the_load_balancer", "serving-hosts", _set(["healthCheckType"], "EC2")),
    ("hosts_behind_the_load_balancer", "serving-hosts", _set(["targetGroupArns"], [])),
    (
        "hosts_behind_the_load_balancer",
        "serving-hosts",
        _set(["instanceRefresh", "preferences", "minHealthyPercentage"], 50),
    ),
    ("hosts_behind_the_load_balancer", "serving-lb-grpc-tg", _set(["deregistrationDelay"], 0)),
    ("training_nodes_self_heal", "training-nodes", _set(["maxSize"], 4)),
    ("training_nodes_self_heal", "training-nodes", _set(["healthCheckType"], "ELB")),
    ("training_nodes_self_heal", "training-nodes", _set(["launchConfiguration"], "lc-legacy")),
    ("training_nodes_self_heal", "training-nodes", _set(["vpcZoneIdentifiers"], ["subnet-a", "subnet-b"])),
    ("training_nodes_self_heal", "training-nodes", None),
]


@pytest.mark.parametrize(
    "check_name,resource,mutate",
    BREAKS,
    ids=[f"{c}-{r}-{'removed' if m is None else i}" for i, (c, r, m) in enumerate(BREAKS)],
)
def test_check_bites_on_broken_copy(example_run, check_name, resource, mutate):
    check = getattr(checks, check_name)
    if mutate is None:
        bad = without(example_run, resource)
    else:
        bad = broken(example_run, resource, lambda r: mutate(r, example_run))
    violations = check(bad)
    assert violations, f"{check_name} did not notice the broken {resource}"
    assert all(v.startswith("urn:pulumi:") for v in violations), violations


def test_every_check_has_a_negative_case():
    broken_checks = {name for name, _, _ in BREAKS}
    assert broken_checks == {c.__name__ for c in checks.ALL_CHECKS}


def test_launch_template_user_data_is_base64_of_a_script(example_run):
    lt = example_run.named("training-launch-template")
    assert base64.b64decode(lt.inputs["userData"]).decode().startswith("#!/bin/bash")
