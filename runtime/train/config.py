"""Typed training configuration: keyword-only dataclasses, a docstring under every field.

Validation runs on construction and names the key, the value and the fix; what belongs to one
model family (`model.kind`, its keys, the data sources it reads) is validated by that family
(`runtime.train.families.check_config`, run by `runtime.train.loading` on every config it builds). Presets are in
`runtime.train.presets`, file and `--set` overrides in `runtime.train.loading`, and the DeepSpeed
config is derived from a `TrainConfig` by `runtime.train.deepspeed_config` (one source of truth;
batch sizes are derived from `global_batch_size`, never typed twice).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILTIN_SOURCE = "builtin:mlp-binary"
"""`data.source` of the embedded default tabular dataset (see `runtime.train.data`)."""

BUILTIN_TEXT_SOURCE = "builtin:python-stdlib"
"""`data.source` of the embedded default text corpus: the `.py` sources of the running Python's
standard library, found at run time (see `runtime.train.text`)."""

TABULAR_SUFFIXES = (".npz", ".csv")

HF_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The attention and MLP projections of Llama-architecture models: the default LoRA targets."""


class ConfigError(ValueError):
    """A user mistake in the training config: the message names the key, the value and the fix."""


def fail(key: str, value: Any, fix: str) -> None:
    """Raise the ConfigError for `key` = `value` with `fix` (what to change)."""
    raise ConfigError(f"config `{key}` = {value!r} is invalid: {fix}")


@dataclass(kw_only=True)
class ModelConfig:
    kind: str = "mlp"
    """The model family (`runtime.train.families.FAMILIES`): `mlp` (binary classifier on feature
    rows), `gpt` (decoder-only language model on byte tokens) or `hf-causal-lm` (a Hugging Face
    causal language model fine-tuned from `model_dir`). Each family validates its own keys below
    (marked `mlp:`, `gpt:` or `hf-causal-lm:`) and the data sources it reads."""

    hidden_sizes: tuple[int, ...] = (100,)
    """mlp: widths of the hidden Dense+ReLU layers; the input width follows the data."""

    num_outputs: int = 1
    """mlp: output units; 1 means binary classification with a sigmoid output."""

    num_layers: int = 4
    """gpt: transformer blocks."""

    num_heads: int = 4
    """gpt: attention heads per block (embed_dim must divide by it)."""

    embed_dim: int = 128
    """gpt: width of the residual stream."""

    ffn_hidden: int = 0
    """gpt: hidden units of each feed-forward block (0: 4 x embed_dim)."""

    seq_len: int = 128
    """gpt, hf-causal-lm: tokens per training sequence (the context length; packed, no padding);
    hf-causal-lm: at most the model's `max_position_embeddings`."""

    activation_checkpointing: bool = False
    """gpt, hf-causal-lm: recompute each block's activations in the backward pass instead of
    keeping them (less memory, about one more forward pass of compute)."""

    model_dir: str = ""
    """hf-causal-lm: the Hugging Face model directory to fine-tune (`config.json`, `*.safetensors`,
    tokenizer files): a local path or `s3://bucket/prefix/` (`stratus model push` uploads one).
    Nothing is ever downloaded from a model hub."""

    lora_rank: int = 0
    """hf-causal-lm: rank of the LoRA adapters (`peft`); 0 fine-tunes every weight."""

    lora_alpha: float = 16.0
    """hf-causal-lm: LoRA scaling numerator (the adapter's update is B @ A x lora_alpha / lora_rank)."""

    lora_dropout: float = 0.0
    """hf-causal-lm: dropout on the LoRA adapters' input while training."""

    lora_targets: tuple[str, ...] = HF_LORA_TARGETS
    """hf-causal-lm: names of the linear layers that get adapters (default: the attention and MLP
    projections of Llama, Mistral and Qwen models)."""

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        self.lora_targets = tuple(self.lora_targets)

    @property
    def ffn_width(self) -> int:
        return self.ffn_hidden or 4 * self.embed_dim


@dataclass(kw_only=True)
class DataConfig:
    source: str = BUILTIN_SOURCE
    """Dataset. mlp: `builtin:mlp-binary`, a `.npz`/`.csv` path or `s3://bucket/key.(npz|csv)`.
    gpt: `builtin:python-stdlib`, a directory of UTF-8 text files, a `.txt` file, a `.jsonl` file
    (one JSON object per line with a `text_field`), or the same on S3 (`s3://bucket/prefix/` for
    every object under a prefix). hf-causal-lm: a `.jsonl` file (local or `s3://bucket/key.jsonl`)
    of `{"text": ...}` or `{"messages": [{"role": ..., "content": ...}, ...]}` lines."""

    label_column: str = "label"
    """For `.csv`: the header name of the 0/1 label column; every other column is a feature."""

    val_fraction: float = 0.2
    """Fraction of rows held out for validation (chosen by `seed`, disjoint from training)."""

    num_samples: int = 12_000
    """Rows generated for the builtin dataset (ignored for files)."""

    num_features: int = 1000
    """Feature width of the builtin dataset (ignored for files: their width is used)."""

    standardize: bool = True
    """mlp: scale each feature to zero mean and unit variance with the training split's statistics
    (saved with the checkpoint and folded into the exported model, which then takes raw rows);
    constant columns are centred only."""

    text_field: str = "text"
    """gpt, `.jsonl` sources: the key holding each record's text."""

    max_bytes: int = 4_000_000
    """gpt: read at most this many bytes of text (files in sorted order; 0: no limit)."""

    val_max_sequences: int = 64
    """gpt, hf-causal-lm: validation sequences scored per evaluation (0: the whole validation split)."""

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            fail("data.source", self.source, "give builtin:mlp-binary, a .npz/.csv path or s3:// URL")
        if self.max_bytes < 0 or self.val_max_sequences < 0:
            fail("data.max_bytes/val_max_sequences", (self.max_bytes, self.val_max_sequences), "use 0 or more")
        if not 0.0 < self.val_fraction < 1.0:
            fail("data.val_fraction", self.val_fraction, "use a fraction strictly between 0 and 1")
        if self.num_samples < 10:
            fail("data.num_samples", self.num_samples, "use at least 10 rows")
        if self.num_features < 1:
            fail("data.num_features", self.num_features, "use a positive width")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 1e-3
    """Adam learning rate."""

    betas: tuple[float, float] = (0.9, 0.999)
    """Adam moment decay rates."""

    eps: float = 1e-8
    """Adam epsilon."""

    weight_decay: float = 0.0
    """L2 weight decay (classic Adam, not decoupled)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if not 0.0 < self.lr < 1.0:
            fail("optim.lr", self.lr, "use a learning rate in (0, 1), e.g. 1e-3")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            fail("optim.betas", self.betas, "give two numbers in [0, 1), e.g. [0.9, 0.999]")
        if self.eps <= 0:
            fail("optim.eps", self.eps, "use a small positive number, e.g. 1e-8")
        if self.weight_decay < 0:
            fail("optim.weight_decay", self.weight_decay, "use 0 or a positive number")


OFFLOAD_CHOICES = ("none", "optimizer", "all")
PRECISION_CHOICES = ("auto", "fp32", "bf16")


@dataclass(kw_only=True)
class ParallelConfig:
    zero_stage: int = 2
    """ZeRO stage: 0 plain data parallel, 1 shards optimizer state, 2 also gradients, 3 also params."""

    offload: str = "optimizer"
    """CPU offload: `none`, `optimizer` (optimizer state + step on CPU), `all` (also params, ZeRO-3)."""

    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step on each rank."""

    precision: str = "auto"
    """`auto` (bf16 on GPU, fp32 on CPU), `fp32`, or `bf16`."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            fail("parallel.zero_stage", self.zero_stage, "use 0, 1, 2 or 3")
        if self.offload not in OFFLOAD_CHOICES:
            fail("parallel.offload", self.offload, f"use one of {', '.join(OFFLOAD_CHOICES)}")
        if self.offload == "optimizer" and self.zero_stage == 0:
            fail("parallel.offload", self.offload, "optimizer offload needs parallel.zero_stage >= 1")
        if self.offload == "all" and self.zero_stage != 3:
            fail("parallel.offload", self.offload, "parameter offload needs parallel.zero_stage=3")
        if self.grad_accum_steps < 1:
            fail("parallel.grad_accum_steps", self.grad_accum_steps, "use 1 or more")
        if self.precision not in PRECISION_CHOICES:
            fail("parallel.precision", self.precision, f"use one of {', '.join(PRECISION_CHOICES)}")


@dataclass(kw_only=True)
class TrainConfig:
    preset: str = "mlp-binary"
    """Name of the preset this config started from (recorded in checkpoints and artifacts)."""

    run_name: str = "mlp-binary"
    """Run directory name under `output_dir`; checkpoints go to `<output_dir>/<run_name>/checkpoints`."""

    output_dir: str = "runs"
    """Parent directory of run directories."""

    epochs: int = 10
    """Passes over the training split."""

    global_batch_size: int = 32
    """Samples per optimizer step over all ranks; micro batch = global / (world * grad_accum)."""

    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs). For smoke tests and benchmarks."""

    seed: int = 1234
    """Seeds data order, the validation split, and parameter init."""

    log_every: int = 50
    """Print a progress line every N optimizer steps."""

    eval_every: int = 0
    """Evaluate on the validation split every N steps (0: at the end of each epoch only)."""

    checkpoint_every: int = 500
    """Commit a checkpoint every N optimizer steps (and always at the end)."""

    keep_checkpoints: int = 3
    """How many committed checkpoints to keep (the newest verified one is never deleted)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        if not self.run_name or any(c in self.run_name for c in "/\\ ") or self.run_name in (".", ".."):
            fail("run_name", self.run_name, "use a plain name without slashes or spaces")
        for key in ("epochs", "global_batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                fail(key, getattr(self, key), "use a positive integer")
        for key in ("max_steps", "eval_every"):
            if getattr(self, key) < 0:
                fail(key, getattr(self, key), "use 0 (off) or a positive integer")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def micro_batch_size(self, world_size: int) -> int:
        """Per-rank micro batch; raises ConfigError when the global batch does not divide."""
        per_step = world_size * self.parallel.grad_accum_steps
        if self.global_batch_size % per_step:
            fail(
                "global_batch_size",
                self.global_batch_size,
                f"it must be a multiple of ranks ({world_size}) x parallel.grad_accum_steps "
                f"({self.parallel.grad_accum_steps}) = {per_step}",
            )
        return self.global_batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def digest(self) -> str:
        """sha256 of the canonical JSON form; recorded in checkpoint manifests."""
        return config_digest(self.to_dict())


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of a config dict's canonical JSON (`TrainConfig.digest` of the config it holds).

    Checkpoints are verified against the dict as it was written, not as this version rebuilds it:
    a field added since (filled with its default on load) must not make older checkpoints fail.
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
