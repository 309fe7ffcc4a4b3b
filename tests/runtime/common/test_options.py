"""Flags derived from an options dataclass: help from field docstrings, types, round trips."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.common.options import field_docs, option, parse_options, parser_for, to_argv


@dataclass(kw_only=True)
class Opts:
    repo: str = option(metavar="REPO")
    """Where models live."""

    out_dir: Path | None = option(None, flag="--out")
    """Output directory."""

    count: int = 3
    """How many."""

    ratio: float = option(0.5, choices=(0.25, 0.5))
    """A fraction."""

    tags: tuple[str, ...] = option((), flag="--tag")
    """Repeatable."""

    verbose: bool = False
    """Talk more."""

    secret: int | None = option(None, hidden=True)
    """Not shown."""

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("--count must be >= 0")


def test_field_docstrings_become_help_with_defaults(capsys):
    assert field_docs(Opts)["tags"] == "Repeatable."
    with pytest.raises(SystemExit) as e:
        parse_options(Opts, ["--help"], prog="x")
    assert e.value.code == 0
    text = capsys.readouterr().out
    for words in ("--repo REPO", "Where models live.", "--out OUT", "How many. (default: 3)", "--tag", "--verbose"):
        assert words in text, words
    assert "--secret" not in text and "Not shown" not in text


def test_types_repeats_and_validation():
    opts = parse_options(
        Opts,
        ["--repo", "r", "--out", "o", "--count", "7", "--tag", "a", "--tag", "b", "--verbose", "--secret", "4"],
        prog="x",
    )
    assert opts == Opts(repo="r", out_dir=Path("o"), count=7, tags=("a", "b"), verbose=True, secret=4)
    assert parse_options(Opts, ["--repo", "r"], prog="x") == Opts(repo="r")
    with pytest.raises(ValueError, match="--count must be >= 0"):
        parse_options(Opts, ["--repo", "r", "--count", "-1"], prog="x")
    for bad in ([], ["--repo", "r", "--ratio", "0.3"], ["--repo", "r", "--count", "x"]):
        with pytest.raises(SystemExit) as e:
            parse_options(Opts, bad, prog="x")
        assert e.value.code == 2


def test_to_argv_parses_back_and_leaves_defaults_and_hidden_out():
    opts = Opts(repo="r", out_dir=Path("o"), tags=("a", "b"), verbose=True, ratio=0.25, secret=9)
    argv = to_argv(opts)
    assert argv == ["--repo", "r", "--out", "o", "--ratio", "0.25", "--tag", "a", "--tag", "b", "--verbose"]
    assert parse_options(Opts, argv, prog="x") == Opts(**{**vars(opts), "secret": None})
    assert to_argv(opts, skip=("repo", "tags")) == ["--out", "o", "--ratio", "0.25", "--verbose"]


def test_an_annotation_without_a_command_line_form_is_refused():
    @dataclass(kw_only=True)
    class Bad:
        mapping: dict = option(None)

    with pytest.raises(TypeError, match="Bad.mapping"):
        parser_for(Bad, prog="x")
