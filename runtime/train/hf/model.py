"""Hugging Face causal LMs for training and export: loaded under ZeRO-3, LoRA, merged, saved.

Training (`load_for_training`): `AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)`
with a `transformers.integrations.HfDeepSpeedConfig` alive, which is how transformers loads under
ZeRO-3: the model is created inside its own `deepspeed.zero.Init` (each parameter partitioned as
its layer is built) and rank 0 reads the safetensors and scatters each layer's weights as they
load, so no rank ever holds the whole model. LoRA adapters (`peft.get_peft_model`) are added after
loading, outside `zero.Init`, so peft's own initialisation (B = 0: the adapted model starts equal
to the base) runs on whole tensors; DeepSpeed partitions them when the engine is created.

Export: `model_for_weights` builds the same module shape from the checkpoint's `hf/config.json`
(random init; consolidated weights are then loaded with strict=True); the export half
(`runtime.export.hf.hfdir`) merges LoRA adapters and writes the Hugging Face directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime.train.config import ModelConfig
from runtime.train.hf.modeldir import TOKENIZER_FILES

HF_DIR = "hf"
"""Where a checkpoint keeps the model's config and tokenizer files (`<tag>/hf/`)."""
CHECKPOINT_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)
"""The model directory's files committed with every checkpoint (those that exist)."""


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_config(path: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def lora_config(model: ModelConfig) -> Any:
    """The peft `LoraConfig` of `model.lora_*` (causal LM task)."""
    from peft import LoraConfig

    return LoraConfig(
        r=model.lora_rank,
        lora_alpha=model.lora_alpha,
        lora_dropout=model.lora_dropout,
        target_modules=list(model.lora_targets),
        task_type="CAUSAL_LM",
    )


def _finish(module: nn.Module, model: ModelConfig) -> nn.Module:
    """Activation checkpointing and LoRA, the same for training and for export."""
    module.config.use_cache = False
    if model.activation_checkpointing:
        module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if model.lora_rank > 0:
        from peft import get_peft_model

        module = get_peft_model(module, lora_config(model))
    return module


def load_for_training(
    path: Path, model: ModelConfig, ds_config: dict[str, Any], dtype: torch.dtype
) -> tuple[nn.Module, Any]:
    """The model of `path` ready for `deepspeed.initialize`, and the `HfDeepSpeedConfig` that must
    stay referenced while the model lives (transformers holds it only weakly).

    Under ZeRO-3 (`ds_config`'s stage 3) parameters are partitioned as they load (module docstring).
    """
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
    keep_alive = HfDeepSpeedConfig(ds_config) if zero3 else None
    module = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    return _finish(module, model), keep_alive


def model_for_weights(model: ModelConfig, state: dict[str, torch.Tensor], tag_dir: Path) -> nn.Module:
    """A randomly initialised model shaped like the trained one (`<tag>/hf/config.json`), wrapped
    in the same LoRA adapters, so the consolidated state dict's names fit (fp32)."""
    from transformers import AutoModelForCausalLM

    config = load_config(Path(tag_dir) / HF_DIR)
    module = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return _finish(module, dataclasses.replace(model, activation_checkpointing=False))
