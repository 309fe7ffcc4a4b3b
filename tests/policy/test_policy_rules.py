"""Every CrossGuard rule on the real program (no violations) and on one-field mutations (exactly one)."""

from __future__ import annotations

import copy
import json
import re

import pytest
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from infra.tools.offline import ProgramRun
from infra.tools.policycheck import evaluate


def _all_violations(run: ProgramRun) -> list:
    return [v for found in evaluate(run).values() for v in found]


@pytest.mark.parametrize("shape", ["example_run", "efa_spot_run"])
def test_the_real_program_passes_every_rule(request, shape):
    assert _all_violations(request.getfixturevalue(shape)) == []


def _preview_copy(run: ProgramRun) -> ProgramRun:
    """The run as a first `pulumi preview` sees it: values computed from other resources unknown."""
    copied = copy.deepcopy(run)
    by_urn = {r.urn: r for r in copied.resources}
    for r in copied.resources:
        computed = set()
        for urns in r.property_dependencies.values():
            for dep in (by_urn[u] for u in urns if u in by_urn):
                computed |= {str(v) for k, v in dep.state.items() if k not in dep.inputs} | {dep.id}

        def blank(value, computed=computed):
            if isinstance(value, str) and any(c and c in value for c in computed):
                return UNKNOWN_STRING_VALUE
            if isinstance(value, dict):
                return {k: blank(v) for k, v in value.items()}
            if isinstance(value, list):
                return [blank(v) for v in value]
            return value

        for prop in r.property_dependencies:
            if prop in r.inputs:
                r.inputs[prop] = r.state[prop] = blank(r.inputs[prop])
        for key in set(r.state) - set(r.inputs):
            r.state[key] = UNKNOWN_STRING_VALUE
    return copied


def test_rules_accept_values_unknown_during_preview(example_run):
    preview = _preview_copy(example_run)
    sse = preview.named("storage-models-encryption").inputs["rules"][0]
    assert sse["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"] == UNKNOWN_STRING_VALUE
    assert _all_violations(preview) == []


def _both(resource):
    """inputs and state: resource rules read inputs, stack rules read outputs."""
    return (resource.inputs, resource.state)


def _set(path, value):
    def mutate(run, resource):
        for props in _both(resource):
            target = props
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

    return mutate


def _edit_policy(field, edit):
    def mutate(run, resource):
        doc = json.loads(resource.inputs[field])
        edit(doc)
        for props in _both(resource):
            props[field] = json.dumps(doc)

    return mutate


def _remove(run, resource):
    run.resources.remove(resource)


def _detach_from_key(run, resource):
    _set(["rules", 0, "applyServerSideEncryptionByDefault", "kmsMasterKeyId"], "arn:aws:kms:us-east-1:999:key/x")(
        run, resource
    )
    resource.property_dependencies["rules"] = []


def _cert_with_a_key(run, resource):
    key = run.named("serving-tls-server-key").state["privateKeyPemPkcs8"]
    for props in _both(resource):
        props["value"] = props["value"] + key


def _launch_configuration(run, resource):
    resource.property_dependencies.pop("launchTemplate")
    for props in _both(resource):
        props.pop("launchTemplate")
        props["launchConfiguration"] = "stratus-legacy-lc"


MUTATIONS = [
    (
        "aws-ec2-instance-imdsv2-required",
        "training-launch-template",
        _set(["metadataOptions", "httpTokens"], "optional"),
    ),
    (
        "aws-ec2-instance-imdsv2-required",
        "serving-launch-template",
        _set(["metadataOptions", "httpPutResponseHopLimit"], 2),
    ),
    ("aws-ec2-securitygroup-no-internet-ingress", "network-lb-inference-0", _set(["cidrIpv4"], "0.0.0.0/0")),
    (
        "aws-ec2-securitygroup-no-internet-ingress",
        "network-endpoints-sg",
        _set(
            ["ingress"],
            [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "ipv6CidrBlocks": ["::/0"], "description": "HTTPS"}],
        ),
    ),
    ("aws-ec2-securitygroup-no-ssh", "network-endpoints-https", _set(["fromPort"], 22)),
    (
        "aws-iam-policy-no-wildcard-allow",
        "iam-trainer-policy",
        _edit_policy("policy", lambda d: d["Statement"][0].update(Action=["s3:*"])),
    ),
    (
        "aws-iam-policy-no-wildcard-allow",
        "storage-key",
        _edit_policy("policy", lambda d: d["Statement"][0].update(Principal={"AWS": "*"})),
    ),
    ("aws-kms-key-rotation-enabled", "storage-key", _set(["enableKeyRotation"], False)),
    (
        "aws-ec2-instance-no-public-ip",
        "training-launch-template",
        _set(["networkInterfaces", 0, "associatePublicIpAddress"], "true"),
    ),
    ("aws-ec2-instance-no-public-ip", "network-private-us-east-1b", _set(["mapPublicIpOnLaunch"], True)),
    (
        "aws-ec2-instance-no-public-ip",
        "serving-launch-template",
        _set(["networkInterfaces", 0, "associatePublicIpAddress"], "true"),
    ),
    (
        "aws-ec2-defaultsecuritygroup-no-rules",
        "network-default-sg",
        _set(["egress"], [{"protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["10.0.0.0/8"]}]),
    ),
    ("aws-ssm-parameter-secure-string", "serving-token-parameter", _set(["type"], "String")),
    ("aws-ssm-parameter-secure-string", "serving-tls-key-parameter", _set(["type"], "String")),
    ("aws-ssm-parameter-secure-string", "serving-tls-cert-parameter", _cert_with_a_key),
    (
        "aws-tagging-resource-required-tags",
        "serving-hosts",
        _set(["tags"], [{"key": "project", "value": "stratus"}, {"key": "stack", "value": "dev"}]),
    ),
    ("aws-tagging-resource-required-tags", "network-vpc", _set(["tags"], {"project": "stratus", "stack": "dev"})),
    (
        "aws-s3-bucket-sse-kms-stack-key",
        "storage-models-encryption",
        _set(["rules", 0, "applyServerSideEncryptionByDefault", "sseAlgorithm"], "AES256"),
    ),
    ("aws-s3-bucket-sse-kms-stack-key", "storage-logs-encryption", _detach_from_key),
    ("aws-s3-bucket-sse-kms-stack-key", "storage-datasets-encryption", _set(["rules", 0, "bucketKeyEnabled"], False)),
    ("aws-s3-bucket-sse-kms-stack-key", "storage-checkpoints-encryption", _remove),
    ("aws-s3-bucket-public-access-block", "storage-logs-public-access-block", _set(["ignorePublicAcls"], False)),
    ("aws-s3-bucket-public-access-block", "storage-models-public-access-block", _remove),
    (
        "aws-s3-bucket-policy-tls-only",
        "storage-checkpoints-policy",
        _edit_policy("policy", lambda d: d.update(Statement=d["Statement"][1:])),
    ),
    (
        "aws-ec2-volume-encrypted-stack-key",
        "training-launch-template",
        _set(["blockDeviceMappings", 0, "ebs", "encrypted"], "false"),
    ),
    (
        "aws-ec2-volume-encrypted-stack-key",
        "serving-launch-template",
        _set(["blockDeviceMappings", 0, "ebs", "encrypted"], "false"),
    ),
    ("aws-ec2-volume-encrypted-stack-key", "training-launch-template", _set(["blockDeviceMappings"], [])),
    ("aws-ec2-securitygroup-rule-description", "network-training-to-self", _set(["description"], "")),
    (
        "aws-ec2-securitygroup-rule-description",
        "network-serving-sg",
        _set(["egress"], [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["10.0.0.0/8"]}]),
    ),
    ("aws-ec2-launchtemplate-explicit-settings", "training-launch-template", _set(["monitoring"], {"enabled": False})),
    ("aws-ec2-launchtemplate-explicit-settings", "serving-launch-template", _set(["ebsOptimized"], "false")),
    ("aws-ec2-launchtemplate-explicit-settings", "training-launch-template", _set(["iamInstanceProfile"], None)),
    ("aws-autoscaling-group-launch-template", "training-nodes", _launch_configuration),
    (
        "aws-autoscaling-group-launch-template",
        "serving-hosts",
        _set(["mixedInstancesPolicy"], {"instancesDistribution": {}}),
    ),
    ("aws-ec2-vpc-flow-logs-enabled", "network-flow-log", _set(["trafficType"], "REJECT")),
    ("aws-ec2-vpc-flow-logs-enabled", "network-flow-log", _remove),
    ("aws-lb-listener-tls-to-targets", "serving-lb-https-listener", _set(["protocol"], "TLS")),
    ("aws-lb-listener-tls-to-targets", "serving-lb-grpc-listener", _set(["protocol"], "UDP")),
    ("aws-lb-listener-tls-to-targets", "serving-lb-grpc-tg", _set(["healthCheck", "protocol"], "TCP")),
    ("aws-lb-listener-tls-to-targets", "serving-lb-https-tg", _set(["healthCheck", "protocol"], "HTTP")),
    (
        "aws-iam-role-own-ssm-parameters",
        "iam-server-policy",
        _edit_policy(
            "policy", lambda d: d.update(Statement=[s for s in d["Statement"] if s["Sid"] != "DenyOtherParameters"])
        ),
    ),
    (
        "aws-iam-role-own-ssm-parameters",
        "iam-server-policy",
        _edit_policy(
            "policy", lambda d: d["Statement"][2]["Resource"].append("arn:aws:ssm:us-east-1:123456789012:parameter/x")
        ),
    ),
]
OWNERS = {
    "serving-lb-grpc-tg": "serving-lb-grpc-listener",
    "serving-lb-https-tg": "serving-lb-https-listener",
    "iam-server-policy": "iam-server-role",
}
"""Resources whose violation a stack rule reports on another resource (the listener, the role)."""


@pytest.mark.parametrize(
    "policy,resource,mutate",
    MUTATIONS,
    ids=[f"{p}-{r}-{getattr(m, '__name__', 'set').strip('_')}-{i}" for i, (p, r, m) in enumerate(MUTATIONS)],
)
def test_rule_reports_exactly_the_broken_field(example_run, policy, resource, mutate):
    run = copy.deepcopy(example_run)
    target = run.named(resource)
    owner = target
    if target.property_dependencies.get("bucket"):
        owner = next(r for r in run.resources if r.urn == target.property_dependencies["bucket"][0])
    if target.property_dependencies.get("vpcId") and policy.endswith("flow-logs-enabled"):
        owner = next(r for r in run.resources if r.urn == target.property_dependencies["vpcId"][0])
    if resource in OWNERS and policy in ("aws-lb-listener-tls-to-targets", "aws-iam-role-own-ssm-parameters"):
        owner = run.named(OWNERS[resource])
    mutate(run, target)
    violations = _all_violations(run)
    assert [v.policy for v in violations] == [policy], violations
    (violation,) = violations
    assert violation.urn == owner.urn
    assert f"'{owner.name}'" in violation.message and violation.message.endswith(".")


def test_every_rule_has_a_mutation(rules):
    assert {p for p, _, _ in MUTATIONS} == {p.name for p in rules.ALL_POLICIES}


def test_rule_names_follow_the_convention_and_are_mandatory(rules):
    names = [p.name for p in rules.ALL_POLICIES]
    assert len(names) == len(set(names))
    for policy in rules.ALL_POLICIES:
        assert re.fullmatch(r"aws-[a-z0-9]+-[a-z0-9]+-[a-z0-9-]+", policy.name), policy.name
        assert policy.enforcement_level.value == "mandatory"


def test_taggable_list_covers_every_taggable_type_the_program_registers(rules, example_run, efa_spot_run):
    import importlib
    import inspect

    registered = {r.type for run in (example_run, efa_spot_run) for r in run.resources if r.custom}
    for typ in registered:
        package, rest = typ.split(":", 1)
        module, cls = rest.split(":")
        module = module.split("/")[0]
        mod = importlib.import_module(f"pulumi_{package}" + ("" if module == "index" else f".{module}"))
        takes_tags = "tags" in inspect.signature(getattr(mod, cls)._internal_init).parameters
        assert takes_tags == (typ in rules.TAGGABLE), typ
