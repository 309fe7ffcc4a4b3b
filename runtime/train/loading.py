"""A `TrainConfig` from a preset, a YAML/JSON file and `key=value` overrides, validated once.

    cfg = load_config("mlp-binary", config_file="my.yaml", overrides=["parallel.zero_stage=3"])

Unknown keys are errors that list the valid keys at that level. Every config built here is also
checked by its model family (`runtime.train.families.check_config`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from runtime.train.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    TrainConfig,
)
from runtime.train.presets import PRESETS

_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "parallel": ParallelConfig,
}


def _merge(base: dict[str, Any], updates: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in updates.items():
        name = key.replace("-", "_")
        full = f"{prefix}{name}"
        if name not in out:
            valid = ", ".join(f"{prefix}{k}" for k in out)
            raise ConfigError(f"unknown config key `{full}`; valid keys here: {valid}")
        if isinstance(out[name], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config `{full}` must be a mapping of its fields, got {value!r}")
            out[name] = _merge(out[name], value, f"{full}.")
        else:
            out[name] = value
    return out


def _build(data: dict[str, Any]) -> TrainConfig:
    kwargs = dict(data)
    for name, cls in _SECTIONS.items():
        try:
            kwargs[name] = cls(**kwargs[name])
        except TypeError as e:
            raise ConfigError(f"config section `{name}`: {e}") from None
    try:
        cfg = TrainConfig(**kwargs)
    except TypeError as e:
        raise ConfigError(f"config: {e}") from None
    from runtime.train.families import check_config  # here: `--help` of a command loads no torch

    check_config(cfg)  # the family's part: model.kind, its keys, its data sources
    return cfg


def nest(dotted_key: str, value: Any) -> dict[str, Any]:
    """`nest("a.b", 1)` -> `{"a": {"b": 1}}`: a dotted override key as the nested mapping it sets."""
    node: dict[str, Any] = {}
    cursor = node
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return node


def parse_override(text: str) -> dict[str, Any]:
    """`a.b=value` -> {"a": {"b": value}}; the value is parsed as YAML (numbers, lists, strings)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. parallel.zero_stage=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return nest(key, value)


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read it ({e.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys")
    return data


def load_config(
    preset: str = "mlp-binary",
    *,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> TrainConfig:
    """Preset, then the file's keys, then each `key=value` override, validated once at the end.

    Raises:
        ConfigError: unknown preset or key, or a value that fails validation.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    data = PRESETS[preset]().to_dict()
    if config_file is not None:
        data = _merge(data, read_config_file(config_file))
    for text in overrides:
        data = _merge(data, parse_override(text))
    return _build(data)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved by `TrainConfig.to_dict()` (checkpoints, artifacts)."""
    return _build(_merge(TrainConfig().to_dict(), data))
