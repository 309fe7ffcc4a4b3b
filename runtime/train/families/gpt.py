"""The `gpt` family (model.kind=gpt): a decoder-only language model on byte tokens.

Packed byte-token windows (`runtime.train.text`), `build_gpt`, next-token cross-entropy,
validation perplexity. Its export half: `runtime.export.families.gpt`; its artifacts are served
with the `generate` extension.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.common.tokens import VOCAB_SIZE
from runtime.train.config import BUILTIN_SOURCE, BUILTIN_TEXT_SOURCE, TABULAR_SUFFIXES, ModelConfig, TrainConfig, fail
from runtime.train.data import Dataset
from runtime.train.families.perplexity import PerplexityReport
from runtime.train.families.spec import Family
from runtime.train.gpt import build_gpt, ffn_sizes_of, flops_per_token
from runtime.train.text import load_text_dataset


def check_config(cfg: TrainConfig) -> None:
    """The gpt keys of `model` and a text `data.source`."""
    model = cfg.model
    for key in ("num_layers", "num_heads", "embed_dim", "seq_len"):
        if not isinstance(getattr(model, key), int) or getattr(model, key) < 1:
            fail(f"model.{key}", getattr(model, key), "use a positive integer")
    if model.embed_dim % model.num_heads:
        fail("model.embed_dim", model.embed_dim, f"it must be a multiple of model.num_heads ({model.num_heads})")
    if model.ffn_hidden < 0:
        fail("model.ffn_hidden", model.ffn_hidden, "use 0 (4 x embed_dim) or a positive width")
    source = cfg.data.source
    if source == BUILTIN_SOURCE or source.lower().endswith(TABULAR_SUFFIXES):
        fix = (
            "model.kind=gpt reads text: builtin:python-stdlib, a directory of "
            "text files, a .txt or .jsonl file, or s3://bucket/prefix/"
        )
        fail("data.source", source, fix)


def model_for_weights(model: ModelConfig, state: dict[str, torch.Tensor], tag_dir: Path) -> nn.Module:
    """`build_gpt` with the feed-forward widths stored in the weights (pruned exports differ)."""
    return build_gpt(model, ffn_sizes_of(state, model.num_layers))


class LanguageModelTask(PerplexityReport):
    """Next-token prediction on packed byte-token windows (model.kind=gpt)."""

    partitions_own_model = False

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.tokens_per_sample = cfg.model.seq_len

    def load_data(self) -> Dataset:
        return load_text_dataset(self.cfg.data, self.cfg.model.seq_len, self.cfg.seed)

    def build_model(self, data: Dataset) -> nn.Module:
        return build_gpt(self.cfg.model)

    def flops_per_sample(self, num_params: int) -> float:
        return float(flops_per_token(self.cfg.model) * self.cfg.model.seq_len)

    def checkpoint_files(self) -> dict[str, bytes]:
        return {}

    def _token_loss(self, engine, x: torch.Tensor, device: str, reduction: str) -> torch.Tensor:
        ids = x.to(device)
        logits = engine(ids[:, :-1]).float()
        return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), ids[:, 1:].reshape(-1), reduction=reduction)

    def loss(self, engine, x: torch.Tensor, y: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
        return self._token_loss(engine, x, device, "mean")

    def eval_sums(self, engine, x, y, device: str, dtype: torch.dtype) -> tuple[float, float, float]:
        count = float(x.shape[0] * (x.shape[1] - 1))
        return self._token_loss(engine, x, device, "sum").item(), 0.0, count

    def data_line(self, data: Dataset) -> str:
        return f"sequences of {self.cfg.model.seq_len + 1} tokens"

    def announce_line(self, flops_per_sample: float) -> str | None:
        batch, seq = self.cfg.global_batch_size, self.cfg.model.seq_len
        return f"tokens/step {batch * seq} ({batch} x seq_len {seq}); {flops_per_sample / seq:.3g} FLOPs per token"


FAMILY = Family(
    name="gpt",
    builtin_source=BUILTIN_TEXT_SOURCE,
    check_config=check_config,
    task=LanguageModelTask,
    model_for_weights=model_for_weights,
    serving_extension="generate",
)
