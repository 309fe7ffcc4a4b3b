"""The stack on the moto server: a KMS key, the four buckets, two running instances."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

REGION = "us-east-1"
_AMI: dict[str, str] = {}


@pytest.fixture
def stack(aws_env, tmp_path):
    """A KMS key, the four buckets and two running instances; returns (outputs dict, outputs file)."""
    kms = boto3.client("kms", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    key_arn = kms.create_key(Description="stratus test")["KeyMetadata"]["Arn"]
    suffix = uuid.uuid4().hex[:8]
    buckets = {p: f"stratus-{p}-{suffix}" for p in ("datasets", "checkpoints", "models", "logs")}
    for b in buckets.values():
        s3.create_bucket(Bucket=b)
    if "image" not in _AMI:  # listing moto's ~1,300 images takes seconds; one is enough
        _AMI["image"] = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    image = _AMI["image"]
    instances = ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, InstanceType="g5.xlarge")["Instances"]
    outputs = {
        "region": REGION,
        "kms_key_arn": key_arn,
        **{f"{p}_bucket": b for p, b in buckets.items()},
        "trainer_instance_ids": [i["InstanceId"] for i in instances],
        "trainer_private_ips": [i["PrivateIpAddress"] for i in instances],
        "trainer_slots_per_node": 2,
    }
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return outputs, path
