"""Config validation: each mistake fails the program (as at preview) naming the key and the fix."""

from __future__ import annotations

import pytest

from infra.config.errors import ConfigError, ConfigErrors
from infra.config.stack import parse_config
from infra.tools.offline import run_program
from tests.infra.support import example_config

BAD_CONFIGS = {
    "unknown-trainer-type": ({"trainer-instance-type": "p9.huge"}, "trainer-instance-type", "not a supported GPU"),
    "cpu-trainer-type": ({"trainer-instance-type": "c7i.xlarge"}, "trainer-instance-type", "g5.xlarge"),
    "zero-trainers": ({"trainer-count": 0}, "trainer-count", "use 1-64"),
    "trainer-count-not-int": ({"trainer-count": "two"}, "trainer-count", "is not an integer"),
    "bad-vpc-cidr": ({"vpc-cidr": "10.42.0.0/33"}, "vpc-cidr", "not a valid CIDR"),
    "host-bits-vpc-cidr": ({"vpc-cidr": "10.42.0.1/16"}, "vpc-cidr", "host bits"),
    "public-vpc-cidr": ({"vpc-cidr": "8.8.0.0/16"}, "vpc-cidr", "private range"),
    "serving-open-to-internet": ({"serving-allowed-cidrs": ["0.0.0.0/0"]}, "serving-allowed-cidrs", "internet"),
    "serving-bad-cidr": ({"serving-allowed-cidrs": ["10.0.0.0/40"]}, "serving-allowed-cidrs", "not a valid CIDR"),
    "serving-cidrs-not-list": ({"serving-allowed-cidrs": "10.0.0.0/8"}, "serving-allowed-cidrs", "list of strings"),
    "spot-without-cap": ({"trainer-market": "spot"}, "trainer-spot-max-price", "is required"),
    "spot-cap-above-on-demand": (
        {"trainer-market": "spot", "trainer-spot-max-price": 99},
        "trainer-spot-max-price",
        "on-demand price",
    ),
    "cap-without-spot": ({"trainer-spot-max-price": 2}, "trainer-spot-max-price", "trainer-market: spot"),
    "unknown-market": ({"trainer-market": "reserved"}, "trainer-market", "on-demand"),
    "unsupported-region": ({"aws:region": "sa-east-1"}, "aws:region", "ap-northeast-1, ap-northeast-2, ap-south-1"),
    "missing-region": ({"aws:region": None}, "aws:region", "pulumi config set aws:region"),
    "type-not-in-region": (
        {"aws:region": "eu-west-1", "trainer-instance-type": "p5.48xlarge"},
        "trainer-instance-type",
        "regions that offer it: ap-northeast-1, ap-south-1, ap-southeast-2, ca-central-1",
    ),
    "serving-type-not-in-region": (
        {"aws:region": "eu-west-1", "serving-instance-type": "g6.xlarge"},
        "serving-instance-type",
        "regions that offer it: us-east-1, us-west-2",
    ),
    "misspelt-key": (
        {"trainer-instnce-type": "g5.xlarge"},
        "trainer-instnce-type",
        "did you mean `trainer-instance-type`",
    ),
    "bad-ami": ({"trainer-ami": "ami-xyz"}, "trainer-ami", "AMI id"),
    "ssh-port": ({"serving-port": 22}, "serving-port", "1024-65535"),
    "grpc-port-privileged": ({"serving-grpc-port": 443}, "serving-grpc-port", "1024-65535, or 0 to turn gRPC off"),
    "grpc-port-too-high": ({"serving-grpc-port": 70000}, "serving-grpc-port", "1024-65535"),
    "grpc-port-negative": ({"serving-grpc-port": -1}, "serving-grpc-port", "out of range"),
    "grpc-port-is-http-port": ({"serving-grpc-port": 8000}, "serving-grpc-port", "also `serving-port`"),
    "grpc-port-clash-moved-http": (
        {"serving-port": 9000, "serving-grpc-port": 9000},
        "serving-grpc-port",
        "0 to turn gRPC off",
    ),
    "no-serving-hosts": ({"serving-count": 0}, "serving-count", "use 1-20"),
    "too-many-serving-hosts": ({"serving-count": 21}, "serving-count", "use 1-20"),
    "serving-max-below-count": ({"serving-max-count": 1}, "serving-max-count", "use 2-20"),
    "serving-max-without-scaling": ({"serving-max-count": 4}, "serving-max-count", "serving-scale-cpu-percent"),
    "serving-cpu-target-too-high": (
        {"serving-max-count": 4, "serving-scale-cpu-percent": 95},
        "serving-scale-cpu-percent",
        "use 10-90 %",
    ),
    "serving-drain-too-long": ({"serving-drain-seconds": 4000}, "serving-drain-seconds", "use 0-3600 s"),
    "unsafe-model-name": ({"model-name": "x; rm -rf /"}, "model-name", "A-Za-z0-9"),
    "model-name-with-dot-dot": ({"model-name": "mlp..binary"}, "model-name", "no '..'"),
    "model-name-too-long": ({"model-name": "m" * 65}, "model-name", "at most 64 characters"),
    "short-kms-window": ({"kms-deletion-window-days": 3}, "kms-deletion-window-days", "7-30"),
    "ssm-endpoints-missing": ({"interface-endpoints": ["kms", "logs"]}, "interface-endpoints", "Session Manager"),
    "unknown-endpoint": (
        {"interface-endpoints": ["ssm", "ssmmessages", "ec2messages", "s3x"]},
        "interface-endpoints",
        "s3x",
    ),
    "too-many-zones": ({"availability-zone-count": 5}, "availability-zone-count", "2-4"),
    "zone-of-other-region": ({"training-availability-zone": "eu-west-1a"}, "training-availability-zone", "us-east-1a"),
    "negative-budget": ({"max-hourly-usd": -1}, "max-hourly-usd", "not positive"),
    "negative-trainer-price": ({"trainer-on-demand-usd-per-hour": -1}, "trainer-on-demand-usd-per-hour", "positive"),
    "zero-serving-price": ({"serving-on-demand-usd-per-hour": 0}, "serving-on-demand-usd-per-hour", "positive"),
    "spot-cap-above-configured-on-demand": (
        {
            "aws:region": "us-east-2",
            "trainer-instance-type": "p5.48xlarge",
            "trainer-market": "spot",
            "trainer-spot-max-price": 60,
            "trainer-on-demand-usd-per-hour": 50,
        },
        "trainer-spot-max-price",
        "on-demand price 50",
    ),
    "gpu-serving-small-root": (
        {"serving-instance-type": "g5.xlarge", "serving-root-volume-gb": 50},
        "serving-root-volume-gb",
        "100-16384",
    ),
    "bool-typo": ({"egress-enabled": "maybe"}, "egress-enabled", "is not true or false"),
    "small-trainer-root": ({"trainer-root-volume-gb": 30}, "trainer-root-volume-gb", "100-16384"),
    "negative-training-hours": ({"training-hours": 0}, "training-hours", "not positive"),
    "unknown-ami-framework": ({"trainer-ami-framework": "pytorch-1.0"}, "trainer-ami-framework", "pytorch-2.13"),
    "block-end-without-block": (
        {"trainer-capacity-block-end": "2026-12-10T11:30:00Z"},
        "trainer-capacity-block-end",
        "trainer-market: capacity-block",
    ),
    "too-many-p4d-for-a-slash-24": (
        {"trainer-instance-type": "p4d.24xlarge", "trainer-count": 24, "vpc-cidr": "10.42.0.0/24"},
        "vpc-cidr",
        "short by 6 addresses",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_fails_the_program_naming_key_and_fix(case):
    overrides, key, fragment = BAD_CONFIGS[case]
    qualified = key if ":" in key else f"stratus:{key}"
    with pytest.raises(ConfigError) as raised:
        run_program(example_config(**overrides))
    message = str(raised.value)
    assert f"config `{qualified}`" in message
    assert "Fix:" in message
    assert fragment in message, message


def test_two_bad_keys_are_both_reported_with_their_fixes():
    with pytest.raises(ConfigErrors) as raised:
        run_program(example_config(**{"trainer-count": 0, "kms-deletion-window-days": 3}))
    assert raised.value.keys == ["trainer-count", "kms-deletion-window-days"]
    message = str(raised.value)
    assert message.startswith("2 config problems:")
    assert "config `stratus:trainer-count`: 0 is out of range. Fix: use 1-64" in message
    assert "config `stratus:kms-deletion-window-days`: 3 is out of range. Fix: use 7-30" in message


def test_unknown_unparsable_and_invalid_keys_are_all_reported_in_one_error():
    raw = {
        "aws:region": "us-east-1",
        "trainer-cuont": 3,
        "serving-port": "eighty",
        "trainer-market": "reserved",
        "serving-grpc-port": 8000,
        "vpc-cidr": "8.8.0.0/16",
    }
    with pytest.raises(ConfigErrors) as raised:
        parse_config(raw)
    # the unparsable serving-port took its default (8000): no second, misleading problem for it
    assert raised.value.keys == ["trainer-cuont", "serving-port", "vpc-cidr", "trainer-market", "serving-grpc-port"]
    assert "did you mean `trainer-count`?" in str(raised.value)
    # one bad key alone stays a plain ConfigError with its single message
    with pytest.raises(ConfigError) as single:
        parse_config({"aws:region": "us-east-1", "trainer-count": 0})
    assert not isinstance(single.value, ConfigErrors) and str(single.value).startswith("config `stratus:trainer-count`")
