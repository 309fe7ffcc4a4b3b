"""The stack config: parsed once into a frozen dataclass, one key per field, strings and typed values alike."""

from __future__ import annotations

import pytest

from infra.config.stack import FIELDS, StackConfig, parse_config
from runtime.contract import MODEL_NAME_MAX_CHARS, model_name_problem
from tests.infra.support import EXAMPLE


def test_example_config_is_valid_and_read_once_into_a_frozen_dataclass():
    cfg = parse_config({"aws:region": "us-east-1"})
    assert isinstance(cfg, StackConfig)
    assert cfg.serving_allowed_cidrs == (cfg.vpc_cidr,)
    with pytest.raises(AttributeError):
        cfg.num_trainers = 3  # type: ignore[misc]


def test_every_field_has_a_key_and_a_docstring_in_the_example():
    example = EXAMPLE.read_text()
    for key in FIELDS:
        shown = key if ":" in key else f"stratus:{key}"
        assert shown in example, f"{key} is missing from Pulumi.example.yaml"


def test_typed_values_and_strings_parse_alike():
    from_strings = parse_config(
        {
            "aws:region": "us-west-2",
            "trainer-count": "4",
            "egress-enabled": "true",
            "serving-allowed-cidrs": '["10.0.0.0/8"]',
            "max-hourly-usd": "20.5",
        }
    )
    typed = parse_config(
        {
            "aws:region": "us-west-2",
            "trainer-count": 4,
            "egress-enabled": True,
            "serving-allowed-cidrs": ["10.0.0.0/8"],
            "max-hourly-usd": 20.5,
        }
    )
    assert from_strings == typed
    assert typed.num_trainers == 4 and typed.serving_allowed_cidrs == ("10.0.0.0/8",)


def test_model_name_accepts_what_the_runtime_accepts():
    longest = "m" * MODEL_NAME_MAX_CHARS
    assert model_name_problem(longest) is None
    assert parse_config({"aws:region": "us-east-1", "model-name": longest}).model_name == longest
