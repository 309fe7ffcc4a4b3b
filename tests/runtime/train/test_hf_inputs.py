"""hf-causal-lm without DeepSpeed: model directories (checked, verified, pushed to S3), JSONL text
and chat data with assistant-only masks, LoRA building and merging, and the config's errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.common.log import get_logger
from runtime.export.hf.hfdir import merged_model, save_hf_dir
from runtime.train.config import ConfigError, DataConfig, ModelConfig
from runtime.train.data import DataError
from runtime.train.families import family_of
from runtime.train.hf import model as hf_model
from runtime.train.hf.data import chat_tokens, load_jsonl_dataset
from runtime.train.hf.modeldir import MODEL_MANIFEST, ModelDirError, check_model_dir, model_manifest
from runtime.train.loading import load_config
from tests.runtime.conftest import write_chat_jsonl

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 3 plus 4?"},
    {"role": "assistant", "content": "7."},
    {"role": "user", "content": "And 5 plus 5?"},
    {"role": "assistant", "content": "10."},
]


@pytest.fixture
def model_copy(tiny_llama_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "model"))


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return hf_model.load_tokenizer(tiny_llama_dir)


def hf_config(model_dir: Path, data: Path, *sets: str):
    overrides = [f"model.model_dir={model_dir}", f"data.source={data}", *sets]
    return load_config("hf-tiny", overrides=overrides)


# --- data --------------------------------------------------------------------------------------


def test_chat_mask_covers_exactly_the_assistant_tokens(tokenizer):
    ids, mask = chat_tokens(tokenizer, MESSAGES, "x")
    assert len(ids) == len(mask)
    targets = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    others = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert targets == "7.</s>\n10.</s>\n"
    assert "What is 3 plus 4?" in others and "<|assistant|>" in others and "7." not in others
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(MESSAGES, tokenize=False)


def test_jsonl_is_split_by_document_before_packing(tokenizer, tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"text": f"document number {i} " * 8}) for i in range(30)]
    path.write_text("\n".join(lines) + "\n" + write_chat_jsonl(tmp_path / "c.jsonl", 30).read_text())
    data = load_jsonl_dataset(DataConfig(source=str(path), val_fraction=0.2), tokenizer, seq_len=32, seed=0)
    assert data.x.shape == data.y.shape and data.x.shape[1] == 33 and data.x.dtype == np.int64
    assert (data.y[:, 1:].sum(axis=1) > 0).all() and set(np.unique(data.y)) <= {0.0, 1.0}
    train_text = tokenizer.decode(data.x[data.train_idx].reshape(-1))
    val_text = tokenizer.decode(data.x[data.val_idx].reshape(-1))
    val_docs = {n for n in range(30) if f"document number {n} " in val_text}
    assert val_docs and not any(f"document number {n} " in train_text for n in val_docs)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"bad.jsonl: line 2 is not JSON"),
        (json.dumps({"body": "x"}), r"line 2 has neither a string `text` nor a non-empty `messages`"),
        (json.dumps({"messages": [{"role": "user"}]}), r"line 2: messages\[0\].content is missing"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), r"line 2: no message with role `assistant`"),
    ],
    ids=["not-json", "no-field", "no-content", "no-assistant"],
)
def test_bad_jsonl_lines_name_the_line_and_field(tokenizer, tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        load_jsonl_dataset(DataConfig(source=str(path)), tokenizer, seq_len=16, seed=0)


def test_config_needs_a_model_dir_and_a_jsonl(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"`model.model_dir` = '' is invalid: give a Hugging Face directory"):
        load_config("hf-tiny")
    with pytest.raises(ConfigError, match=r"`data.source` = 'builtin:python-stdlib' is invalid: .* reads a .jsonl"):
        hf_config(tiny_llama_dir, "builtin:python-stdlib")
    with pytest.raises(ConfigError, match=r"`model.lora_rank` = -1 is invalid"):
        hf_config(tiny_llama_dir, tmp_path / "c.jsonl", "model.lora_rank=-1")
    cfg = hf_config(tiny_llama_dir, write_chat_jsonl(tmp_path / "c.jsonl"), "model.seq_len=1024")
    with pytest.raises(ConfigError, match=r"`model.seq_len` = 1024 is invalid: .* takes at most 512 positions"):
        family_of(cfg).task(cfg).load_data()


# --- model directories -------------------------------------------------------------------------


def test_a_complete_directory_passes_and_its_manifest_is_verified(model_copy):
    assert check_model_dir(model_copy) == model_copy
    (model_copy / MODEL_MANIFEST).write_text(json.dumps(model_manifest(model_copy)))
    assert check_model_dir(model_copy) == model_copy
    weights = model_copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF  # one flipped byte in the weight data: only the hashes can tell
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelDirError, match=r"model.safetensors: does not match its sha256/size in stratus-model"):
        check_model_dir(model_copy)


def test_missing_files_and_pickle_weights_are_refused_by_name(model_copy):
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match=r"tokenizer.json: missing"):
        check_model_dir(model_copy)
    (model_copy / "config.json").unlink()
    with pytest.raises(ModelDirError, match=r"config.json: missing"):
        check_model_dir(model_copy)


def test_bin_weights_are_refused_as_pickle(model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    with pytest.raises(ModelDirError, match=r"no \*.safetensors weights \(pytorch_model.bin are pickle files"):
        check_model_dir(model_copy)


def test_truncated_safetensors_is_named(model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelDirError, match=r"model.safetensors: .*(truncated|not a readable safetensors)"):
        check_model_dir(model_copy)


def test_a_file_the_manifest_does_not_list_is_refused(model_copy):
    (model_copy / MODEL_MANIFEST).write_text(json.dumps(model_manifest(model_copy)))
    (model_copy / "extra.safetensors").write_bytes(b"")
    with pytest.raises(ModelDirError, match=r"extra.safetensors not listed in stratus-model.json"):
        check_model_dir(model_copy)


# --- LoRA --------------------------------------------------------------------------------------


def test_lora_model_merges_to_base_plus_scaled_b_a(tiny_llama_dir, tmp_path):
    cfg = ModelConfig(kind="hf-causal-lm", model_dir=str(tiny_llama_dir), lora_rank=4, lora_alpha=8.0)
    ds_config = {"zero_optimization": {"stage": 0}}
    module, _ = hf_model.load_for_training(tiny_llama_dir, cfg, ds_config, torch.float32)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    assert any("lora_A" in k for k in state) and all(
        not p.requires_grad for n, p in module.named_parameters() if "lora" not in n
    )
    base_q = "base_model.model.model.layers.0.self_attn.q_proj"
    torch.manual_seed(0)
    with torch.no_grad():
        module.get_parameter(f"{base_q}.lora_B.default.weight").normal_()
    a = module.get_parameter(f"{base_q}.lora_A.default.weight").detach().clone()
    b = module.get_parameter(f"{base_q}.lora_B.default.weight").detach().clone()
    w = module.get_parameter(f"{base_q}.base_layer.weight").detach().clone()
    # the export half rebuilds the same names from the checkpoint's hf/config.json
    (tmp_path / "tag" / "hf").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama_dir / name, tmp_path / "tag" / "hf" / name)
    rebuilt = hf_model.model_for_weights(cfg, state, tmp_path / "tag")
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    merged = merged_model(rebuilt)
    assert type(merged).__name__ == "LlamaForCausalLM"
    expected = w + (b @ a) * (8.0 / 4)
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, expected)
    out = save_hf_dir(merged, tmp_path / "tag" / "hf", tmp_path / "out")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    plain = dataclasses.replace(cfg, lora_rank=0)
    assert merged_model(hf_model.model_for_weights(plain, {}, tmp_path / "tag")).__class__.__name__ == (
        "LlamaForCausalLM"
    )


def test_train_command_refuses_a_bad_model_dir_with_exit_code_2(model_copy, tmp_path, caplog):
    from runtime.train.command import main

    (model_copy / "model.safetensors").unlink()
    data = write_chat_jsonl(tmp_path / "chat.jsonl", 20)
    argv = ["--preset", "hf-tiny", "--model-dir", str(model_copy), "--data", str(data), "--dry-run"]
    logger = get_logger()  # does not propagate: listen to it directly
    logger.addHandler(caplog.handler)
    try:
        assert main(argv) == 2
    finally:
        logger.removeHandler(caplog.handler)
    assert f"{model_copy}: no *.safetensors weights" in caplog.text
