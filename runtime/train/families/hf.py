"""The `hf-causal-lm` family: fine-tune a user's Hugging Face causal language model.

`model.model_dir` names a Hugging Face directory (local or `s3://`, `runtime.train.hf.modeldir`);
the data is a JSONL of text or chat lines, packed with assistant-only loss masks
(`runtime.train.hf.data`); the model loads under ZeRO-3 as transformers supports it, with optional
LoRA (`runtime.train.hf.model`). The loss is next-token cross-entropy over the masked targets;
the validation metric is perplexity. Checkpoints carry the model's config and tokenizer files under
`hf/`, so export needs nothing but the checkpoint. Its export half: `runtime.export.families.hf`;
its artifacts are served with the `generate` extension (which also carries the
OpenAI-compatible routes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runtime.train.config import TrainConfig, fail
from runtime.train.data import Dataset
from runtime.train.families.perplexity import PerplexityReport
from runtime.train.families.spec import Family
from runtime.train.hf import model as hf_model
from runtime.train.hf.data import load_jsonl_dataset
from runtime.train.hf.modeldir import resolve_model_dir

MODEL_CACHE = "hf-model"
"""Under the run directory: where an `s3://` model directory is downloaded."""


def check_config(cfg: TrainConfig) -> None:
    """The hf-causal-lm keys of `model` and a `.jsonl` `data.source` (the directory is read at load)."""
    model = cfg.model
    if not model.model_dir:
        fail(
            "model.model_dir", model.model_dir, "give a Hugging Face directory: --model-dir PATH or s3://bucket/prefix/"
        )
    if not isinstance(model.seq_len, int) or model.seq_len < 1:
        fail("model.seq_len", model.seq_len, "use a positive integer (the packing length)")
    if not isinstance(model.lora_rank, int) or model.lora_rank < 0:
        fail("model.lora_rank", model.lora_rank, "use 0 (full fine-tune) or a positive adapter rank, e.g. 16")
    if model.lora_rank and model.lora_alpha <= 0:
        fail("model.lora_alpha", model.lora_alpha, "use a positive number, e.g. 16")
    if not 0.0 <= model.lora_dropout < 1.0:
        fail("model.lora_dropout", model.lora_dropout, "use a probability in [0, 1)")
    if model.lora_rank and (not model.lora_targets or not all(isinstance(t, str) and t for t in model.lora_targets)):
        fail("model.lora_targets", model.lora_targets, "list the linear layers to adapt, e.g. [q_proj, v_proj]")
    if not cfg.data.source.lower().endswith(".jsonl"):
        fix = (
            'model.kind=hf-causal-lm reads a .jsonl file (local or s3://) of {"text": ...} or '
            '{"messages": [{"role": ..., "content": ...}]} lines; pass it with --data'
        )
        fail("data.source", cfg.data.source, fix)


class CausalLMTask(PerplexityReport):
    """Next-token prediction on masked, packed windows of a Hugging Face model (model.kind=hf-causal-lm)."""

    partitions_own_model = True

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.tokens_per_sample = cfg.model.seq_len
        self.model_path: Path | None = None  # the checked local directory, once resolved
        self.hf_config: Any = None
        self._has_weights = False
        self._ds_config_ref: Any = None  # transformers' HfDeepSpeedConfig, weakly held by it

    def _resolve(self, *, weights: bool = False) -> Path:
        """The model directory; without `weights`, an `s3://` one's config and tokenizer only (what
        data loading and a launch's validation need), so a launching machine never downloads the
        model; `build_model` asks for the whole directory."""
        if self.model_path is None or (weights and not self._has_weights):
            self.model_path = resolve_model_dir(
                self.cfg.model.model_dir, self.cfg.run_dir / MODEL_CACHE, weights=weights
            )
            self._has_weights = weights or not self.cfg.model.model_dir.startswith("s3://")
            self.hf_config = hf_model.load_config(self.model_path)
            limit = getattr(self.hf_config, "max_position_embeddings", None)
            if limit is not None and self.cfg.model.seq_len > limit:
                fail("model.seq_len", self.cfg.model.seq_len, f"{self.model_path} takes at most {limit} positions")
        return self.model_path

    def load_data(self) -> Dataset:
        path = self._resolve()
        tokenizer = hf_model.load_tokenizer(path)
        return load_jsonl_dataset(self.cfg.data, tokenizer, self.cfg.model.seq_len, self.cfg.seed)

    def build_model(self, data: Dataset) -> nn.Module:
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        from runtime.train.deepspeed_config import deepspeed_config, resolve_precision

        # The Trainer derives the same dict from the same config (benchmark overrides aside).
        device = "cuda" if get_accelerator().device_name() == "cuda" else "cpu"
        ds_config = deepspeed_config(self.cfg, world_size=dist.get_world_size(), device=device)
        dtype = torch.bfloat16 if resolve_precision(self.cfg, device) == "bf16" else torch.float32
        module, self._ds_config_ref = hf_model.load_for_training(
            self._resolve(weights=True), self.cfg.model, ds_config, dtype
        )
        return module

    def flops_per_sample(self, num_params: int) -> float:
        """6 x parameters per token + the attention term (12 x layers x seq_len x hidden)."""
        self._resolve()
        seq, layers, hidden = self.cfg.model.seq_len, self.hf_config.num_hidden_layers, self.hf_config.hidden_size
        return float((6 * num_params + 12 * layers * seq * hidden) * seq)

    def checkpoint_files(self) -> dict[str, bytes]:
        root = self._resolve()
        return {
            f"{hf_model.HF_DIR}/{name}": (root / name).read_bytes()
            for name in hf_model.CHECKPOINT_FILES
            if (root / name).is_file()
        }

    def _sums(self, engine, x: torch.Tensor, y: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = x.to(device)
        logits = engine(input_ids=ids[:, :-1], use_cache=False).logits.float()
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        weights = y[:, 1:].to(device=device, dtype=torch.float32).reshape(-1)
        return (losses * weights).sum(), weights.sum()

    def loss(self, engine, x: torch.Tensor, y: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
        total, count = self._sums(engine, x, y, device)
        return total / count.clamp(min=1.0)

    def eval_sums(self, engine, x, y, device: str, dtype: torch.dtype) -> tuple[float, float, float]:
        total, count = self._sums(engine, x, y, device)
        return total.item(), 0.0, count.item()

    def data_line(self, data: Dataset) -> str:
        targets = int(data.y[:, 1:].sum())
        return f"windows of {self.cfg.model.seq_len + 1} tokens ({targets} target tokens)"

    def announce_line(self, flops_per_sample: float) -> str | None:
        batch, seq = self.cfg.global_batch_size, self.cfg.model.seq_len
        lora = f"LoRA rank {self.cfg.model.lora_rank}" if self.cfg.model.lora_rank else "full fine-tune"
        return (
            f"model {self.model_path} ({lora}); tokens/step {batch * seq} ({batch} x seq_len {seq}); "
            f"{flops_per_sample / seq:.3g} FLOPs per token"
        )

    def extra_summary(self) -> dict[str, Any]:
        return {"model_dir": self.cfg.model.model_dir, "lora_rank": self.cfg.model.lora_rank}


FAMILY = Family(
    name="hf-causal-lm",
    builtin_source=None,
    check_config=check_config,
    task=CausalLMTask,
    model_for_weights=hf_model.model_for_weights,
    serving_extension="generate",
)
