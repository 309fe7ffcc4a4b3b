"""Training config: presets, overrides, validation messages, DeepSpeed config generation."""

from __future__ import annotations

import json

import pytest

from runtime.train.config import ConfigError
from runtime.train.deepspeed_config import deepspeed_config
from runtime.train.loading import config_from_dict, load_config


def test_mlp_binary_is_the_briefs_model():
    cfg = load_config("mlp-binary")
    assert cfg.model.hidden_sizes == (100,)
    assert cfg.epochs == 10
    assert cfg.global_batch_size == 32
    assert cfg.data.num_features == 1000


def test_overrides_and_file_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nparallel:\n  zero_stage: 3\n  offload: all\nmodel:\n  hidden_sizes: [64, 32]\n")
    cfg = load_config("mlp-binary", config_file=f, overrides=["epochs=5", "optim.lr=0.01"])
    assert (cfg.epochs, cfg.parallel.zero_stage, cfg.parallel.offload) == (5, 3, "all")
    assert cfg.model.hidden_sizes == (64, 32)
    assert cfg.optim.lr == 0.01


def test_json_config_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"global_batch_size": 64}))
    assert load_config(config_file=f).global_batch_size == 64


def test_round_trip_through_dict_keeps_digest():
    cfg = load_config(overrides=["parallel.zero_stage=1"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and again.digest() == cfg.digest()
    assert load_config().digest() != cfg.digest()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["epochs=0"], "`epochs` = 0"),
        (["global_batch_size=-1"], "`global_batch_size` = -1"),
        (["parallel.zero_stage=4"], "`parallel.zero_stage` = 4 is invalid: use 0, 1, 2 or 3"),
        (["parallel.offload=gpu"], "`parallel.offload` = 'gpu' is invalid: use one of none, optimizer, all"),
        (["parallel.zero_stage=2", "parallel.offload=all"], "parameter offload needs parallel.zero_stage=3"),
        (["parallel.zero_stage=0", "parallel.offload=optimizer"], "needs parallel.zero_stage >= 1"),
        (["parallel.precision=fp8"], "`parallel.precision` = 'fp8'"),
        (["parallel.grad_accum_steps=0"], "`parallel.grad_accum_steps` = 0"),
        (["optim.lr=5"], "`optim.lr` = 5"),
        (["optim.betas=[0.9]"], "`optim.betas`"),
        (["model.kind=bogus"], "`model.kind` = 'bogus' is invalid: use one of mlp, gpt"),
        (["model.hidden_sizes=[]"], "`model.hidden_sizes`"),
        (["model.hidden_sizes=[10, -1]"], "`model.hidden_sizes`"),
        (["data.val_fraction=1.5"], "`data.val_fraction` = 1.5"),
        (["data.source=data.parquet"], "use a file ending in .npz"),
        (["data.source=builtin:imagenet"], "the only builtin dataset"),
        (["run_name=a/b"], "`run_name` = 'a/b'"),
        (["max_steps=-2"], "`max_steps` = -2"),
    ],
)
def test_bad_values_name_key_value_and_fix(overrides, expected):
    with pytest.raises(ConfigError) as e:
        load_config("mlp-binary", overrides=overrides)
    assert expected in str(e.value)


def test_unknown_key_is_an_error_listing_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown config key `parallel.zero`; valid keys here: .*parallel.zero_stage"
    ):
        load_config(overrides=["parallel.zero=3"])


def test_unknown_top_level_key_in_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key `learning_rate`"):
        load_config(config_file=f)


def test_section_must_be_mapping():
    with pytest.raises(ConfigError, match="`parallel` must be a mapping"):
        load_config(overrides=["parallel=3"])


def test_override_syntax_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(overrides=["epochs"])
    with pytest.raises(ConfigError, match="unknown preset 'gpt-9'; choose one of: mlp-binary"):
        load_config("gpt-9")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config_file=bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(config_file=tmp_path / "missing.yaml")


def test_deepspeed_config_derives_batches():
    cfg = load_config(overrides=["global_batch_size=64", "parallel.grad_accum_steps=2"])
    ds = deepspeed_config(cfg, world_size=2, device="cpu")
    assert ds["train_batch_size"] == 64
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["train_micro_batch_size_per_gpu"] * 2 * 2 == ds["train_batch_size"]


def test_global_batch_must_divide_over_ranks():
    cfg = load_config(overrides=["global_batch_size=30", "parallel.grad_accum_steps=4"])
    with pytest.raises(ConfigError, match=r"multiple of ranks \(2\) x parallel.grad_accum_steps \(4\) = 8"):
        deepspeed_config(cfg, world_size=2, device="cpu")


@pytest.mark.parametrize(
    ("stage", "offload", "opt_offload", "param_offload"),
    [(0, "none", False, False), (1, "optimizer", True, False), (2, "none", False, False), (3, "all", True, True)],
    ids=["z0", "z1-opt", "z2", "z3-all"],
)
def test_deepspeed_config_zero_and_offload(stage, offload, opt_offload, param_offload):
    cfg = load_config(overrides=[f"parallel.zero_stage={stage}", f"parallel.offload={offload}"])
    zero = deepspeed_config(cfg, world_size=2, device="cpu")["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == opt_offload
    assert ("offload_param" in zero) == param_offload


def test_precision_is_fp32_on_cpu_and_bf16_on_gpu():
    cfg = load_config()
    assert "bf16" not in deepspeed_config(cfg, world_size=2, device="cpu")
    assert deepspeed_config(cfg, world_size=2, device="cuda")["bf16"] == {"enabled": True}
    forced = load_config(overrides=["parallel.precision=fp32"])
    assert "bf16" not in deepspeed_config(forced, world_size=2, device="cuda")


def test_checkpoint_tag_validation_fails_hard():
    assert deepspeed_config(load_config(), world_size=1, device="cpu")["checkpoint"]["tag_validation"] == "Fail"
