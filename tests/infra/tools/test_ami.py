"""`scripts/plan.sh --update-ami`: the newest image from EC2 (moto server) pinned into the stack file."""

from __future__ import annotations

import boto3
import yaml

from infra.components.images import DLAMI_NAME
from infra.tools import ami
from infra.tools.plan import main as plan_main
from tests.infra.support import EXAMPLE

MOTO_BASE_AMI = "ami-12c6146b"  # one of the images moto's EC2 starts with


def _image(ec2, name: str) -> str:
    instance = ec2.run_instances(ImageId=MOTO_BASE_AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    return ec2.create_image(InstanceId=instance, Name=name)["ImageId"]


def test_update_ami_pins_the_newest_dlami_and_leaves_the_rest_of_the_file(tmp_path, aws_env, capsys):
    ec2 = boto3.client("ec2", region_name="us-east-1")
    pattern = DLAMI_NAME.replace("*", "{}")
    _image(ec2, pattern.format("2.12.0", "20260101"))
    newest = _image(ec2, pattern.format("2.13.0", "20261101"))
    _image(ec2, "al2023-ami-2023.9.20261101.0-kernel-6.1-x86_64")
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text(EXAMPLE.read_text())
    pinned = ami.pin_amis(stack, ec2, owners=("self",))
    config = yaml.safe_load(stack.read_text())["config"]
    assert pinned["stratus:trainer-ami"] == config["stratus:trainer-ami"] == newest
    assert config["stratus:serving-ami"].startswith("ami-") and config["stratus:serving-ami"] != newest
    before = yaml.safe_load(EXAMPLE.read_text())["config"]
    assert {k: v for k, v in config.items() if not k.endswith("-ami")} == before
    # the plan now shows the pinned id instead of a lookup
    assert plan_main([str(stack)]) == 0
    assert f"training AMI: {newest} (pinned in stratus:trainer-ami)" in capsys.readouterr().out


def test_update_ami_without_a_matching_image_changes_nothing(tmp_path, aws_env):
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text("config:\n  aws:region: us-west-2\n")
    ec2 = boto3.client("ec2", region_name="us-west-2")  # a region where no test made images
    try:
        ami.pin_amis(stack, ec2, owners=("self",))
    except LookupError as e:
        assert "Deep Learning OSS Nvidia Driver" in str(e)
    else:
        raise AssertionError("no image should match")
    assert stack.read_text() == "config:\n  aws:region: us-west-2\n"
    assert ami.set_key(stack.read_text(), "stratus:trainer-ami", "ami-1", "x") == (
        "config:\n  stratus:trainer-ami: ami-1  # x\n  aws:region: us-west-2\n"
    )


def test_update_ami_pins_the_configured_family_not_the_newest_pytorch(tmp_path, aws_env):
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    pattern = DLAMI_NAME.replace("*", "{}")
    family = _image(ec2, pattern.format("2.11.3", "20260101"))
    _image(ec2, pattern.format("2.13.0", "20261101"))  # newer, but another family
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text("config:\n  aws:region: eu-west-1\n  stratus:trainer-ami-framework: pytorch-2.11\n")
    _image(ec2, "al2023-ami-2023.9.20261101.0-kernel-6.1-x86_64")
    pinned = ami.pin_amis(stack, ec2, owners=("self",))
    assert pinned["stratus:trainer-ami"] == family
    stack.write_text("config:\n  aws:region: eu-west-1\n  stratus:trainer-ami-framework: pytorch-9.9\n")
    try:
        ami.pin_amis(stack, ec2, owners=("self",))
    except ValueError as e:
        assert "pytorch-9.9" in str(e) and "pytorch-2.13" in str(e)
    else:
        raise AssertionError("an unknown family must be refused")
