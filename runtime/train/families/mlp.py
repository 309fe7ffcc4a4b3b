"""The `mlp` family (model.kind=mlp): a binary classifier on feature rows.

Rows standardised with the training split's statistics (`runtime.train.tabular`), `build_mlp`,
BCE with logits, validation accuracy. Its export half: `runtime.export.families.mlp`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runtime.train.config import BUILTIN_SOURCE, BUILTIN_TEXT_SOURCE, TABULAR_SUFFIXES, ModelConfig, TrainConfig, fail
from runtime.train.data import BUILTIN_BEST_ACCURACY, Dataset, load_dataset
from runtime.train.families.spec import Family, WeightsError
from runtime.train.models import build_mlp
from runtime.train.tabular import STATS_FILE, FeatureStats


def check_config(cfg: TrainConfig) -> None:
    """The mlp keys of `model` and a tabular `data.source`."""
    model = cfg.model
    if not model.hidden_sizes or any(not isinstance(h, int) or h < 1 for h in model.hidden_sizes):
        fail("model.hidden_sizes", model.hidden_sizes, "give a list of positive integers, e.g. [100]")
    if model.num_outputs != 1:
        fail("model.num_outputs", model.num_outputs, "only binary classification (1) is supported")
    source = cfg.data.source
    if source == BUILTIN_TEXT_SOURCE or (source != BUILTIN_SOURCE and not source.lower().endswith(TABULAR_SUFFIXES)):
        fix = "use a file ending in .npz (arrays x, y) or .csv, or builtin:mlp-binary (model.kind=mlp)"
        fail("data.source", source, fix)


def model_for_weights(model: ModelConfig, state: dict[str, torch.Tensor], tag_dir: Path) -> nn.Module:
    """`build_mlp` with the input width of the weights' first layer."""
    if "0.weight" not in state:
        raise WeightsError(f"no `0.weight` in the weights ({', '.join(state)}); not an MLP checkpoint")
    return build_mlp(int(state["0.weight"].shape[1]), model)


class BinaryTask:
    """Binary classification of feature rows (model.kind=mlp)."""

    metric_name = "val_accuracy"
    tokens_per_sample = 0
    partitions_own_model = False

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
        return {STATS_FILE: self.stats.to_json()} if self.stats is not None else {}

    def loss(self, engine, x: torch.Tensor, y: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
        logits = engine(x.to(device=device, dtype=dtype)).squeeze(-1).float()
        return F.binary_cross_entropy_with_logits(logits, y.to(device))

    def eval_sums(self, engine, x, y, device: str, dtype: torch.dtype) -> tuple[float, float, float]:
        logits = engine(x.to(device=device, dtype=dtype)).squeeze(-1).float()
        y = y.to(device)
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
        return loss, ((logits > 0).float() == y).sum().item(), float(len(y))

    def finish_eval(self, loss_sum: float, metric_sum: float, count: float) -> tuple[float, float]:
        return loss_sum / count, metric_sum / count

    def data_line(self, data: Dataset) -> str:
        return f"rows x {data.num_features} features"

    def announce_line(self, flops_per_sample: float) -> str | None:
        return None

    def metric_text(self, value: float) -> str:
        return f"val_acc {100 * value:.2f}%"

    def metric_csv(self, value: float) -> str:
        return f"{value:.6f}"

    def speed_text(self, samples_per_s: float) -> str:
        return f"{samples_per_s:.0f} samples/s"

    def summary_facts(self, metric: float, samples_per_s: float) -> dict[str, Any]:
        facts: dict[str, Any] = {"val_accuracy": metric}
        if self.cfg.data.source == BUILTIN_SOURCE:
            facts["best_achievable_accuracy"] = BUILTIN_BEST_ACCURACY
        return facts

    def done_line(self, steps: int, summary: dict[str, Any], run_dir: Path) -> str:
        best = summary.get("best_achievable_accuracy")
        return (
            f"done: {steps} steps, val accuracy {100 * summary['val_accuracy']:.2f}% "
            f"(best achievable {f'{100 * best:.1f}%' if best else 'n/a'}), {run_dir}"
        )


FAMILY = Family(
    name="mlp",
    builtin_source=BUILTIN_SOURCE,
    check_config=check_config,
    task=BinaryTask,
    model_for_weights=model_for_weights,
    serving_extension=None,
)
