"""AMI lookup: the Deep Learning AMI for GPU hosts, Amazon Linux 2023 for CPU hosts."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi_aws as aws

# Both images are Amazon Linux 2023, so one user-data flavour (dnf, python3.11, aws CLI v2)
# serves training nodes and either kind of serving host.
DLAMI_NAME = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch * (Amazon Linux 2023) *"
AL2023_NAME = "al2023-ami-2023.*-x86_64"


@dataclass(frozen=True)
class Image:
    """An AMI and the device name of its root volume (needed to size and encrypt it)."""

    ami_id: str
    root_device_name: str


def find_image(*, gpu: bool, override: str | None, region: str, ssm_parameter: str | None = None) -> Image:
    """Describe the `override` AMI id, or the image an SSM public parameter names, or look up the
    newest matching Amazon-owned AMI.

    Args:
        gpu: True for the Deep Learning AMI, False for plain Amazon Linux 2023.
        override: an AMI id from config (`trainer-ami`, `serving-ami`), or None.
        region: the stack's region.
        ssm_parameter: without an override, the SSM public parameter holding the AMI id (a Deep
            Learning AMI family's `/aws/service/deeplearning/ami/...`); None: the name lookup.
    """
    if override is None and ssm_parameter is not None:
        override = aws.ssm.get_parameter(name=ssm_parameter, region=region).value
    if override is not None:
        result = aws.ec2.get_ami(filters=[{"name": "image-id", "values": [override]}], most_recent=True, region=region)
    else:
        result = aws.ec2.get_ami(
            owners=["amazon"],
            most_recent=True,
            filters=[
                {"name": "name", "values": [DLAMI_NAME if gpu else AL2023_NAME]},
                {"name": "architecture", "values": ["x86_64"]},
                {"name": "state", "values": ["available"]},
            ],
            region=region,
        )
    return Image(result.id, result.root_device_name)
