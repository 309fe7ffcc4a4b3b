"""Pin the stack's AMIs: write the newest matching image ids into a stack file, once.

    ./scripts/plan.sh --update-ami Pulumi.dev.yaml     # or: python -m infra.tools.ami Pulumi.dev.yaml

Needs AWS credentials for the stack's region (ec2:DescribeImages). Looks up the newest
Amazon-owned image of the nodes' Deep Learning AMI family (`stratus:trainer-ami-framework`,
default `pytorch-2.13`: "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.13" on Amazon Linux
2023, the images its SSM public parameter points at) for the training nodes, the newest PyTorch
Deep Learning AMI for a GPU serving host, Amazon Linux 2023 for a CPU serving host, and writes
`stratus:trainer-ami` / `stratus:serving-ami` into the file. Nothing else changes the AMIs: a
routine `pulumi up` keeps the pinned ids; the next `pulumi up` after this command replaces the
serving host and gives nodes added later the new image (running nodes follow it only with
`stratus:trainer-follow-launch-template: true`). Exit status (`runtime.contract.ExitCode`): 0 pinned,
1 (FAILED) AWS found no image or refused the call, 2 (BAD_INPUT) the file is not a stack config.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from infra.components.images import AL2023_NAME, DLAMI_NAME
from infra.config.catalog import AMI_FAMILIES, CATALOG, DEFAULT_AMI_FAMILY
from infra.tools.offline import load_stack_config
from runtime.contract import ExitCode

AMAZON = ("amazon",)


def newest_image(ec2: Any, name_pattern: str, owners: tuple[str, ...] = AMAZON) -> dict:
    """The newest available x86_64 image whose name matches `name_pattern` (EC2 wildcards).

    Raises:
        LookupError: no image matches.
    """
    images = ec2.describe_images(
        Owners=list(owners),
        Filters=[
            {"Name": "name", "Values": [name_pattern]},
            {"Name": "architecture", "Values": ["x86_64"]},
            {"Name": "state", "Values": ["available"]},
        ],
    )["Images"]
    if not images:
        raise LookupError(f"no available x86_64 image named {name_pattern!r} owned by {', '.join(owners)}")
    return max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")))


def set_key(text: str, key: str, value: str, comment: str) -> str:
    """`text` (a stack file) with `key: value`: the key's line (set or commented out) replaced,
    or a new line right under `config:`."""
    line = f"  {key}: {value}  # {comment}"
    pattern = re.compile(rf"^[ \t]*#?[ \t]*{re.escape(key)}:.*$", re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: line, text, count=1)
    return re.sub(r"^config:[ \t]*$", lambda m: f"{m.group(0)}\n{line}", text, count=1, flags=re.M)


def pin_amis(path: Path, ec2: Any, owners: tuple[str, ...] = AMAZON) -> dict[str, str]:
    """Write the newest AMIs into the stack file `path`; return config key -> image id."""
    config = load_stack_config(path)
    serving_gpu = CATALOG.get(str(config.get("stratus:serving-instance-type", "c7i.xlarge")))
    family_name = str(config.get("stratus:trainer-ami-framework", DEFAULT_AMI_FAMILY))
    if family_name not in AMI_FAMILIES:
        raise ValueError(
            f"{path}: stratus:trainer-ami-framework {family_name!r} is not one of {', '.join(AMI_FAMILIES)}"
        )
    wanted = {
        "stratus:trainer-ami": AMI_FAMILIES[family_name].image_name,
        "stratus:serving-ami": DLAMI_NAME if serving_gpu and serving_gpu.gpus else AL2023_NAME,
    }
    text, pinned = path.read_text(), {}
    for key, pattern in wanted.items():
        image = newest_image(ec2, pattern, owners)
        text = set_key(
            text, key, image["ImageId"], f"{image.get('Name', '')}, created {image.get('CreationDate', '?')}"
        )
        pinned[key] = image["ImageId"]
        print(f"{key}: {config.get(key) or 'unpinned'} -> {image['ImageId']} ({image.get('Name', '')})")
    written = (yaml.safe_load(text) or {}).get("config", {})
    assert all(written.get(k) == v for k, v in pinned.items()), "the stack file did not take the new ids"
    path.write_text(text)
    return pinned


def main(argv: list[str] | None = None) -> int:
    """Pin the AMIs of the stack file given on the command line; see the module docstring."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="stack config file (Pulumi.<stack>.yaml) to write the AMI ids into")
    args = parser.parse_args(argv)
    path = Path(args.config)
    try:
        region = load_stack_config(path).get("aws:region")
        if not region:
            raise ValueError(f"{path}: `aws:region` is not set")
    except (ValueError, OSError) as e:
        print(f"--update-ami failed: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        pin_amis(path, boto3.client("ec2", region_name=str(region)))
    except ValueError as e:
        print(f"--update-ami failed: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except (LookupError, BotoCoreError, ClientError) as e:
        print(f"--update-ami failed in {region}: {e}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"pinned in {path}; `pulumi up` keeps these until you run this again or change them")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
