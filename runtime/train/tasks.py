"""What the training loop trains: a binary classifier on rows, or a language model on tokens.

`runtime.train.loop.Trainer` owns the process group, the engine, the order of samples and
checkpoints; a task owns the data, the model, the loss and the validation metric:

- `BinaryTask` (model.kind=mlp): rows standardised with the training split's statistics,
  `build_mlp`, BCE with logits, validation accuracy;
- `LanguageModelTask` (model.kind=gpt): packed byte-token windows, `build_gpt`, next-token
  cross-entropy, validation perplexity.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from runtime.common.tokens import VOCAB_SIZE
from runtime.train.config import TrainConfig
from runtime.train.data import Dataset, load_dataset
from runtime.train.gpt import build_gpt, flops_per_token
from runtime.train.models import build_mlp
from runtime.train.tabular import STATS_FILE, FeatureStats
from runtime.train.text import load_text_dataset


class BinaryTask:
    """Binary classification of feature rows (model.kind=mlp)."""

    metric_name = "val_accuracy"
    tokens_per_sample = 0

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.stats: FeatureStats | None = None

    def load_data(self) -> Dataset:
        data = load_dataset(self.cfg.data, self.cfg.seed)
        if self.cfg.data.standardize:
            self.stats = FeatureStats.fit(data.x[data.train_idx])
            data = dataclasses.replace(data, x=self.stats.apply(data.x))
        return data

    def build_model(self, data: Dataset) -> nn.Module:
        return build_mlp(data.num_features, self.cfg.model)

    def flops_per_sample(self, num_params: int) -> float:
        return 6.0 * num_params

    def eval_batch_size(self, micro_batch: int) -> int:
        return 1024

    def val_indices(self, data: Dataset):
        return data.val_idx

    def checkpoint_files(self) -> dict[str, bytes]:
        """Extra files committed with every checkpoint (covered by its manifest)."""
        return {STATS_FILE: self.stats.to_json()} if self.stats is not None else {}

    def loss(self, engine, x: torch.Tensor, y: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
        logits = engine(x.to(device=device, dtype=dtype)).squeeze(-1).float()
        return F.binary_cross_entropy_with_logits(logits, y.to(device))

    def eval_sums(self, engine, x, y, device: str, dtype: torch.dtype) -> tuple[float, float, float]:
        """(summed loss, summed metric, count) of one validation batch."""
        logits = engine(x.to(device=device, dtype=dtype)).squeeze(-1).float()
        y = y.to(device)
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
        return loss, ((logits > 0).float() == y).sum().item(), float(len(y))

    def finish_eval(self, loss_sum: float, metric_sum: float, count: float) -> tuple[float, float]:
        return loss_sum / count, metric_sum / count


class LanguageModelTask:
    """Next-token prediction on packed byte-token windows (model.kind=gpt)."""

    metric_name = "val_perplexity"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.tokens_per_sample = cfg.model.seq_len

    def load_data(self) -> Dataset:
        return load_text_dataset(self.cfg.data, self.cfg.model.seq_len, self.cfg.seed)

    def build_model(self, data: Dataset) -> nn.Module:
        return build_gpt(self.cfg.model)

    def flops_per_sample(self, num_params: int) -> float:
        return float(flops_per_token(self.cfg.model) * self.cfg.model.seq_len)

    def eval_batch_size(self, micro_batch: int) -> int:
        return max(1, micro_batch)

    def val_indices(self, data: Dataset):
        cap = self.cfg.data.val_max_sequences
        return data.val_idx[:cap] if cap else data.val_idx

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

    def finish_eval(self, loss_sum: float, metric_sum: float, count: float) -> tuple[float, float]:
        loss = loss_sum / count
        return loss, math.exp(min(loss, 50.0))


def make_task(cfg: TrainConfig) -> BinaryTask | LanguageModelTask:
    return LanguageModelTask(cfg) if cfg.model.kind == "gpt" else BinaryTask(cfg)


def load_data(cfg: TrainConfig) -> Dataset:
    """The run's data as its task loads it (validation before any process group starts)."""
    return make_task(cfg).load_data()
