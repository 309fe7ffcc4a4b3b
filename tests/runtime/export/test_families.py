"""The model-family registry: every family has both halves, and stages ask it instead of `model.kind`."""

from __future__ import annotations

import dataclasses

import pytest

from runtime.export.config import ExportError
from runtime.export.families import EXPORTERS, exporter_for
from runtime.train.config import ConfigError
from runtime.train.families import FAMILIES, family, family_of
from runtime.train.loading import load_config


def test_every_family_has_an_exporter_and_names_its_serving_extension():
    assert list(FAMILIES) == ["mlp", "gpt", "hf-causal-lm"] and set(EXPORTERS) == set(FAMILIES)
    extensions = {name: f.serving_extension for name, f in FAMILIES.items()}
    assert extensions == {"mlp": None, "gpt": "generate", "hf-causal-lm": "generate"}
    for name, f in FAMILIES.items():
        assert f.name == name and (f.builtin_source is None or f.builtin_source.startswith("builtin:"))
    assert FAMILIES["hf-causal-lm"].builtin_source is None  # its data is always the user's


def test_presets_select_their_family_and_its_task():
    mlp, gpt = load_config("mlp-binary"), load_config("gpt-tiny")
    assert family_of(mlp) is FAMILIES["mlp"] and family_of(gpt) is FAMILIES["gpt"]
    assert family_of(mlp).task(mlp).metric_name == "val_accuracy"
    assert family_of(gpt).task(gpt).metric_name == "val_perplexity"
    assert family_of(gpt).task(gpt).tokens_per_sample == gpt.model.seq_len


def test_an_unknown_family_names_the_key_the_value_and_the_fix():
    with pytest.raises(ConfigError, match=r"config `model.kind` = 'cnn' is invalid: use one of mlp, gpt"):
        family("cnn")
    stray = dataclasses.replace(FAMILIES["mlp"], name="cnn")
    with pytest.raises(ExportError, match="model family 'cnn' has no exporter"):
        exporter_for(stray)


def test_each_family_checks_only_its_own_keys():
    with pytest.raises(ConfigError, match="`model.embed_dim` = 100 is invalid: it must be a multiple"):
        load_config("gpt-tiny", overrides=["model.embed_dim=100", "model.num_heads=3"])
    # gpt keys mean nothing to an mlp: they are not checked there
    assert load_config("mlp-binary", overrides=["model.num_heads=3"]).model.num_heads == 3
