"""The registry of model families: `model.kind` -> `Family` (`runtime.train.families.spec`).

    family = family_of(cfg)          # ConfigError naming model.kind if no family has that name
    task = family.task(cfg)          # what the Trainer trains

Stages never test `model.kind`; they ask the registry. A family's training half is a module here
(`mlp`, `gpt`, `hf` for `hf-causal-lm`); its export half is registered under the same name in `runtime.export.families`.
"""

from __future__ import annotations

from runtime.train.config import TrainConfig, fail
from runtime.train.families import gpt, hf, mlp
from runtime.train.families.spec import Family, Task, WeightsError

FAMILIES: dict[str, Family] = {f.name: f for f in (mlp.FAMILY, gpt.FAMILY, hf.FAMILY)}
"""Every model family by its `model.kind` name; the first is the default kind."""

__all__ = ["FAMILIES", "Family", "Task", "WeightsError", "check_config", "family", "family_of"]


def family(kind: str) -> Family:
    """The family named `kind`; ConfigError (`model.kind`) naming the valid kinds otherwise."""
    if kind not in FAMILIES:
        fail("model.kind", kind, f"use one of {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def family_of(cfg: TrainConfig) -> Family:
    return family(cfg.model.kind)


def check_config(cfg: TrainConfig) -> Family:
    """Validate what belongs to the config's family (its kind, its keys, its data source)."""
    source = cfg.data.source
    builtins = {f.builtin_source: f.name for f in FAMILIES.values() if f.builtin_source}
    if source.startswith("builtin:") and source not in builtins:
        listed = " and ".join(f"{s} ({name})" for s, name in builtins.items())
        fail("data.source", source, f"the only builtin datasets are {listed}")
    selected = family_of(cfg)
    selected.check_config(cfg)
    return selected
