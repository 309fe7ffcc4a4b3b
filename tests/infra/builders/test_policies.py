"""The trainer/server allow-deny matrix, on the registered roles and on the pure documents."""

from __future__ import annotations

import json

import pytest

from infra.builders import policies
from runtime.contract import wheelhouse_key
from tests.infra.iam_sim import SSM_CORE_PARAMETER_STATEMENT, is_allowed

REGION = "us-east-1"
KEY = "arn:aws:kms:us-east-1:123456789012:key/stack"
PARAMETERS = "arn:aws:ssm:us-east-1:123456789012:parameter/organization/stratus/dev"
TOKEN = f"{PARAMETERS}/serving-token"
TLS_CERT = f"{PARAMETERS}/serving-tls-cert"
TLS_KEY = f"{PARAMETERS}/serving-tls-key"
S3_VIA = {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}
SSM_VIA = {"kms:ViaService": f"ssm.{REGION}.amazonaws.com", "kms:EncryptionContext:PARAMETER_ARN": TOKEN}


def _matrix(arns: dict[str, str], key: str, token: str) -> list[tuple[str, str, str, dict, bool]]:
    """(role, action, resource, context, allowed?) rows of the access matrix."""
    d, c, m = arns["datasets"], arns["checkpoints"], arns["models"]
    ssm_via = {**SSM_VIA, "kms:EncryptionContext:PARAMETER_ARN": token}
    return [
        ("server", "s3:GetObject", f"{m}/models/mlp-binary/3/model.onnx", {}, True),
        ("server", "s3:GetObject", f"{m}/runtime/stratus-runtime.tar.gz", {}, True),
        ("server", "s3:GetObject", f"{m}/{wheelhouse_key('0' * 64)}", {}, True),
        ("server", "s3:PutObject", f"{m}/{wheelhouse_key('0' * 64)}", {}, False),
        ("server", "s3:ListBucket", m, {"s3:prefix": "models/mlp-binary/"}, True),
        ("server", "s3:ListBucket", m, {}, False),
        ("server", "s3:PutObject", f"{m}/models/mlp-binary/LATEST", {}, False),
        ("server", "s3:DeleteObject", f"{m}/models/mlp-binary/LATEST", {}, False),
        ("server", "s3:GetObject", f"{d}/train.jsonl", {}, False),
        ("server", "s3:GetObject", f"{c}/run/latest", {}, False),
        ("server", "ssm:GetParameter", token, {}, True),
        ("server", "kms:Decrypt", key, ssm_via, True),
        ("server", "ssm:GetParameter", TLS_CERT, {}, True),
        ("server", "ssm:GetParameter", TLS_KEY, {}, True),
        ("server", "kms:Decrypt", key, {**ssm_via, "kms:EncryptionContext:PARAMETER_ARN": TLS_KEY}, True),
        # The certificate is a String: nothing to decrypt, so no KMS grant for it.
        ("server", "kms:Decrypt", key, {**ssm_via, "kms:EncryptionContext:PARAMETER_ARN": TLS_CERT}, False),
        # Its own three and nothing else, though SSM core allows GetParameter(s) on every parameter.
        ("server", "ssm:GetParameter", f"{PARAMETERS}/other", {}, False),
        ("server", "ssm:GetParameters", "arn:aws:ssm:us-east-1:123456789012:parameter/unrelated", {}, False),
        ("server", "ssm:GetParametersByPath", PARAMETERS, {}, False),
        (
            "server",
            "kms:Decrypt",
            key,
            {**ssm_via, "kms:EncryptionContext:PARAMETER_ARN": f"{PARAMETERS}/other"},
            False,
        ),
        ("trainer", "ssm:GetParameter", TLS_KEY, {}, False),
        ("trainer", "kms:Decrypt", key, {**ssm_via, "kms:EncryptionContext:PARAMETER_ARN": TLS_KEY}, False),
        ("server", "kms:Decrypt", key, S3_VIA, True),
        ("server", "kms:Decrypt", key, {}, False),
        ("server", "kms:GenerateDataKey", key, S3_VIA, False),
        ("trainer", "s3:GetObject", f"{d}/train.jsonl", {}, True),
        ("trainer", "s3:PutObject", f"{d}/train.jsonl", {}, False),
        ("trainer", "s3:PutObject", f"{c}/run/step-10/manifest.json", {}, True),
        ("trainer", "s3:GetObject", f"{c}/run/latest", {}, True),
        ("trainer", "s3:PutObject", f"{m}/models/mlp-binary/3/model.onnx", {}, True),
        ("trainer", "s3:PutObject", f"{m}/runtime/stratus-runtime.tar.gz", {}, False),
        # the wheelhouse: read when a node builds its venv, written only by the operator's launch
        ("trainer", "s3:GetObject", f"{m}/{wheelhouse_key('0' * 64)}", {}, True),
        ("trainer", "s3:PutObject", f"{m}/{wheelhouse_key('0' * 64)}", {}, False),
        ("trainer", "ssm:GetParameter", token, {}, False),
        ("trainer", "ssm:GetParameters", token, {}, False),
        ("trainer", "ssm:GetParameter", token.rsplit("/", 1)[0] + "/other", {}, False),
        ("trainer", "ssm:GetParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/unrelated", {}, True),
        ("trainer", "kms:Decrypt", key, ssm_via, False),
        ("trainer", "kms:GenerateDataKey", key, S3_VIA, True),
        ("trainer", "iam:PassRole", "arn:aws:iam::123456789012:role/admin", {}, False),
    ]


def matrix_violations(statements: dict[str, list], arns: dict[str, str], key: str, token: str) -> list[str]:
    """Rows of the matrix that the role documents (plus SSM core) get wrong."""
    wrong = []
    for role, action, resource, context, expected in _matrix(arns, key, token):
        allowed = is_allowed(statements[role] + [SSM_CORE_PARAMETER_STATEMENT], action, resource, context)
        if allowed != expected:
            wrong.append(f"{role} {'can' if allowed else 'cannot'} {action} {resource} {context}")
    return wrong


def _pure_documents() -> tuple[dict[str, list], dict[str, str]]:
    arns = {p: f"arn:aws:s3:::stratus-dev-{p}" for p in ("datasets", "checkpoints", "models", "logs")}
    trainer = policies.trainer_policy(
        datasets_arn=arns["datasets"],
        checkpoints_arn=arns["checkpoints"],
        models_arn=arns["models"],
        key_arn=KEY,
        token_parameter_arn=TOKEN,
        region=REGION,
    )
    server = policies.server_policy(
        bucket_arns=arns,
        key_arn=KEY,
        token_parameter_arn=TOKEN,
        tls_cert_parameter_arn=TLS_CERT,
        tls_key_parameter_arn=TLS_KEY,
        region=REGION,
    )
    return {"trainer": trainer["Statement"], "server": server["Statement"]}, arns


def _registered_documents(run) -> tuple[dict[str, list], dict[str, str], str]:
    docs = {
        role: json.loads(run.named(f"iam-{role}-policy").inputs["policy"])["Statement"]
        for role in ("trainer", "server")
    }
    arns = {b.inputs["tags"]["purpose"]: b.state["arn"] for b in run.of_type("aws:s3/bucket:Bucket")}
    return docs, arns, run.of_type("aws:kms/key:Key")[0].state["arn"]


def test_pure_documents_follow_the_matrix():
    docs, arns = _pure_documents()
    assert matrix_violations(docs, arns, KEY, TOKEN) == []


def test_registered_roles_follow_the_matrix(example_run):
    docs, arns, key = _registered_documents(example_run)
    assert example_run.outputs["serving_token_parameter"] == "/organization/stratus/dev/serving-token"
    assert example_run.outputs["serving_tls_cert_parameter"] == "/organization/stratus/dev/serving-tls-cert"
    assert example_run.outputs["serving_tls_key_parameter"] == "/organization/stratus/dev/serving-tls-key"
    assert matrix_violations(docs, arns, key, TOKEN) == []


def _drop(statements, sid):
    return [s for s in statements if s["Sid"] != sid]


def _edit(statements, sid, **changes):
    return [{**s, **changes} if s["Sid"] == sid else s for s in statements]


def _server_writes_models(statements):
    # Both locks must go: the explicit Deny alone would still stop the widened Allow.
    statements = _drop(statements, "DenyWritesToStackBuckets")
    return _edit(statements, "ReadModels", Action=["s3:GetObject", "s3:PutObject"])


BREAKAGES = {
    "trainer-no-token-deny": ("trainer", lambda s: _drop(s, "DenyServingToken")),
    "trainer-kms-any-service": ("trainer", lambda s: _edit(s, "UseStackKeyThroughS3", Condition={})),
    "server-writes-models": ("server", _server_writes_models),
    "server-reads-datasets": (
        "server",
        lambda s: _edit(s, "ReadModels", Resource=["arn:aws:s3:::stratus-dev-datasets/*"]),
    ),
    "server-lists-whole-bucket": ("server", lambda s: _edit(s, "ListModelRepository", Condition={})),
    # SSM core's GetParameter(s) on `*` is back without the Deny: every parameter of the account.
    "server-reads-other-parameters": ("server", lambda s: _drop(s, "DenyOtherParameters")),
    "server-decrypts-any-parameter": (
        "server",
        lambda s: _edit(
            s, "DecryptServingSecrets", Condition={"StringEquals": {"kms:ViaService": SSM_VIA["kms:ViaService"]}}
        ),
    ),
    "server-cannot-decrypt-its-key": (
        "server",
        lambda s: _edit(
            s,
            "DecryptServingSecrets",
            Condition={"StringEquals": {**SSM_VIA, "kms:EncryptionContext:PARAMETER_ARN": TOKEN}},
        ),
    ),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_matrix_bites_on_broken_documents(name):
    role, breakage = BREAKAGES[name]
    docs, arns = _pure_documents()
    docs[role] = breakage(docs[role])
    assert matrix_violations(docs, arns, KEY, TOKEN)


def test_explicit_denies_are_a_second_lock():
    """Dropping only an explicit Deny keeps the matrix: no Allow grants what it denies."""
    docs, arns = _pure_documents()
    docs["server"] = _drop(docs["server"], "DenyWritesToStackBuckets")
    assert matrix_violations(docs, arns, KEY, TOKEN) == []


def test_trust_policy_is_ec2_only():
    statement = policies.ec2_assume_role_policy()["Statement"]
    assert statement == [
        {
            "Sid": "Ec2AssumeRole",
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]
