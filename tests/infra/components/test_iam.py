"""Iam on its own under mocks: two EC2-trusted roles with SSM core and instance profiles."""

from __future__ import annotations

from infra.components.iam import Iam, IamArgs
from infra.tools.offline import run
from tests.infra import checks
from tests.infra.components.support import KEY, TAGS


def test_iam_roles_trust_ec2_and_get_ssm_core():
    arns = {p: f"arn:aws:s3:::b-{p}" for p in ("datasets", "checkpoints", "models", "logs")}
    token = "arn:aws:ssm:us-east-1:1:parameter/t"
    args = IamArgs(
        bucket_arns=arns,
        key_arn=KEY,
        token_parameter_arn=token,
        tls_parameter_arns=("arn:aws:ssm:us-east-1:1:parameter/c", "arn:aws:ssm:us-east-1:1:parameter/k"),
        region="us-east-1",
        partition="aws",
        tags=TAGS,
    )
    result = run(lambda: {"iam": Iam("iam", args)})
    assert checks.no_wildcard_iam(result) == []
    attachments = sorted(
        a.inputs["policyArn"] for a in result.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    )
    assert attachments == ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"] * 2
    assert len(result.of_type("aws:iam/instanceProfile:InstanceProfile")) == 2
