"""Command-line options derived from a command's options dataclass: each option is written once.

A command declares a keyword-only dataclass; every field becomes one flag. The flag's help is the
docstring under the field (the same text a reader of the dataclass sees), its type comes from the
annotation, and `option(...)` metadata adds what a docstring cannot say: another flag name, a
short name, choices, a metavar, or that the flag is hidden. Validation stays in the dataclass's
`__post_init__`, so the CLI and library callers get the same errors.

    @dataclass(kw_only=True)
    class PublishOptions:
        repo: str = option(metavar="REPO")
        '''Model repository: a local directory or s3://bucket/prefix.'''

    opts = parse_options(PublishOptions, argv, prog="stratus publish", description=__doc__)
    argv_again = to_argv(opts)            # the same options as a command line (remote launches)

Annotations understood: `bool` (a switch, default False), `int`, `float`, `str`, `Path`,
`X | None` (optional, default None), `tuple[str, ...]` (repeatable flag, appended in order).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_META = "stratus.option"
_SCALARS = (int, float, str, Path)


def option(
    default: Any = dataclasses.MISSING,
    *,
    flag: str | None = None,
    short: str | None = None,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    hidden: bool = False,
) -> Any:
    """A dataclass field with command-line metadata (use it as the field's default).

    Args:
        default: the default value; omit it for a required option.
        flag: the long flag, e.g. "--out"; default: `--<field-name-with-dashes>`.
        short: a short alias, e.g. "-n".
        choices: the allowed values (argparse rejects others before the dataclass is built).
        metavar: the placeholder in `--help`.
        hidden: accepted but not shown in `--help` (e.g. `--local_rank`, set by DeepSpeed).
    """
    meta = {
        "flag": flag,
        "short": short,
        "choices": tuple(choices) if choices else None,
        "metavar": metavar,
        "hidden": hidden,
    }
    if isinstance(default, tuple | list):
        return dataclasses.field(default_factory=lambda: tuple(default), metadata={_META: meta})
    return dataclasses.field(default=default, metadata={_META: meta})


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """`{field name: docstring}` read from the source of `cls` and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _meta(f: dataclasses.Field) -> dict[str, Any]:
    return f.metadata.get(_META) or {"flag": None, "short": None, "choices": None, "metavar": None, "hidden": False}


def flag_of(f: dataclasses.Field) -> str:
    """The long flag of a field: its `flag` metadata or `--<name with dashes>`."""
    return _meta(f)["flag"] or "--" + f.name.replace("_", "-")


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None was allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _help(f: dataclasses.Field, doc: str, shown_default: Any) -> str:
    text = " ".join(doc.split()) if doc else ""
    if shown_default not in (None, False, (), []) and "default" not in text.lower():
        text = f"{text} (default: {shown_default})" if text else f"default: {shown_default}"
    return text.replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per init field of the dataclass `cls` to `parser`."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = _meta(f)
        names = [flag_of(f)] + ([meta["short"]] if meta["short"] else [])
        hint, _ = _unwrap(hints[f.name])  # `X | None` parses as X with default None
        kwargs: dict[str, Any] = {"dest": f.name}
        default = _default(f)
        if hint is bool:
            kwargs.update(action="store_true", default=bool(default))
        elif typing.get_origin(hint) in (tuple, list):
            (inner, *_) = typing.get_args(hint)
            kwargs.update(action="append", type=inner, default=None, metavar=meta["metavar"])
        elif hint in _SCALARS:
            kwargs.update(type=hint, default=default, metavar=meta["metavar"], choices=meta["choices"])
            if not _has_default(f):
                kwargs["required"] = True
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: annotation {hint!r} has no command-line form")
        kwargs["help"] = argparse.SUPPRESS if meta["hidden"] else _help(f, docs.get(f.name, ""), default)
        parser.add_argument(*names, **kwargs)


def parser_for(cls: type, *, prog: str, description: str | None = None, epilog: str | None = None):
    """An `ArgumentParser` with `cls`'s options; the description keeps its line breaks."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser, cls)
    return parser


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """Build `cls` from parsed arguments (repeatable options become tuples)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or not hasattr(namespace, f.name):
            continue
        value = getattr(namespace, f.name)
        if isinstance(value, list):
            value = tuple(value)
        if value is None and typing.get_origin(_unwrap(typing.get_type_hints(cls)[f.name])[0]) in (tuple, list):
            value = _default(f)
        kwargs[f.name] = value
    return cls(**kwargs)


def parse_options(
    cls: type, argv: Sequence[str] | None, *, prog: str, description: str | None = None, epilog: str | None = None
) -> Any:
    """Parse `argv` into an instance of `cls`; argparse exits with status 2 on a usage error.

    Raises:
        whatever `cls.__post_init__` raises for a value that parses but is invalid.
    """
    parser = parser_for(cls, prog=prog, description=description, epilog=epilog)
    return from_namespace(cls, parser.parse_args(None if argv is None else list(argv)))


def to_argv(opts: Any, *, skip: Sequence[str] = ()) -> list[str]:
    """The command line that parses back into `opts` (fields equal to their default are left out).

    Args:
        opts: an instance of an options dataclass.
        skip: field names to leave out whatever their value.
    """
    argv: list[str] = []
    for f in dataclasses.fields(opts):
        if not f.init or f.name in skip or _meta(f)["hidden"]:
            continue
        value = getattr(opts, f.name)
        if _has_default(f) and value == _default(f):
            continue
        flag = flag_of(f)
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        elif isinstance(value, tuple | list):
            for item in value:
                argv += [flag, str(item)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv
