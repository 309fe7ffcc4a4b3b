"""A Capacity Block's end: parsed from `trainer-capacity-block-end`, printed by the plan with the
time EC2 starts terminating the nodes, and warned about when the run cannot fit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infra.config.capacity import block_summary, block_warnings
from infra.config.errors import ConfigError
from infra.config.stack import parse_config

BLOCK = {
    "aws:region": "us-east-1",
    "trainer-instance-type": "p5.48xlarge",
    "trainer-count": 4,
    "trainer-market": "capacity-block",
    "trainer-capacity-reservation-id": "cr-0a1b2c3d4e5f60718",
    "training-availability-zone": "us-east-1a",
}


def test_the_end_and_the_termination_start_are_printed_in_utc():
    cfg = parse_config({**BLOCK, "trainer-capacity-block-end": "2026-12-10T12:30:00+01:00"})
    assert cfg.capacity_block_end == datetime(2026, 12, 10, 11, 30, tzinfo=UTC)
    (line,) = block_summary(cfg, now=datetime(2026, 12, 9, tzinfo=UTC))
    assert line.startswith(
        "Capacity Block ends 2026-12-10 11:30 UTC; EC2 starts terminating the nodes at 2026-12-10 11:00 UTC"
    )


def test_a_run_longer_than_the_time_left_and_an_ended_block_are_warned_about():
    cfg = parse_config({**BLOCK, "trainer-capacity-block-end": "2026-12-10T11:30:00Z", "training-hours": 12})
    lines = block_summary(cfg, now=datetime(2026, 12, 10, 1, 0, tzinfo=UTC))
    assert "training-hours (12 h) is longer than the 10.0 h left" in lines[1]
    assert block_summary(cfg, now=datetime(2026, 12, 9, tzinfo=UTC))[1:] == []
    over = block_summary(cfg, now=datetime(2026, 12, 10, 11, 5, tzinfo=UTC))
    assert "the Capacity Block is over" in over[1]


def test_an_unknown_end_is_a_warning_and_other_markets_say_nothing():
    (warning,) = block_warnings(parse_config(BLOCK))
    assert "set stratus:trainer-capacity-block-end" in warning
    assert block_summary(parse_config({"aws:region": "us-east-1"})) == []


@pytest.mark.parametrize("text", ["2026-12-10 11:30", "next tuesday", "2026-13-01T00:00:00Z"])
def test_an_end_without_an_offset_or_not_a_time_names_the_key(text):
    with pytest.raises(ConfigError, match=r"config `stratus:trainer-capacity-block-end`: .* UTC offset"):
        parse_config({**BLOCK, "trainer-capacity-block-end": text})
