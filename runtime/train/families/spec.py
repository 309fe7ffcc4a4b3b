"""The model-family spec: what one family (a value of `model.kind`) supplies to every stage.

A `Family` is data: its config checks, its task (data loader, model builder, loss, validation
metric and the facts progress lines and metrics print), the builder that puts consolidated weights
back into a model, and the name of the serving extension its artifacts need. The registry of
families is `runtime.train.families`; a family's export half (compress, ONNX, measure, gate, io
spec) is registered under the same name in `runtime.export.families`, which sits above training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from runtime.train.config import ModelConfig, TrainConfig
from runtime.train.data import Dataset


class WeightsError(ValueError):
    """Consolidated weights that cannot be this family's model (the message names what is missing)."""


class Task(Protocol):
    """What `runtime.train.loop.Trainer` trains, and how progress speaks of it (one per run)."""

    metric_name: str
    """The validation metric's key: a metrics.csv column (`runtime.train.metrics.COLUMNS`) and a
    summary.json key, e.g. `val_accuracy`."""

    tokens_per_sample: int
    """Tokens in one training sample (0: the samples are not token sequences)."""

    partitions_own_model: bool
    """True: `build_model` partitions the parameters itself under ZeRO-3 (a Hugging Face model
    loaded with `HfDeepSpeedConfig`, which runs its own `deepspeed.zero.Init`); False: the
    Trainer builds the model inside `deepspeed.zero.Init`."""

    def load_data(self) -> Dataset: ...

    def build_model(self, data: Dataset) -> nn.Module: ...

    def flops_per_sample(self, num_params: int) -> float: ...

    def eval_batch_size(self, micro_batch: int) -> int: ...

    def val_indices(self, data: Dataset) -> np.ndarray: ...

    def checkpoint_files(self) -> dict[str, bytes]:
        """Extra files committed with every checkpoint (covered by its manifest)."""
        ...

    def loss(self, engine: Any, x: torch.Tensor, y: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor: ...

    def eval_sums(self, engine: Any, x, y, device: str, dtype: torch.dtype) -> tuple[float, float, float]:
        """(summed loss, summed metric, count) of one validation batch."""
        ...

    def finish_eval(self, loss_sum: float, metric_sum: float, count: float) -> tuple[float, float]:
        """(mean loss, metric) from the sums over all ranks."""
        ...

    def data_line(self, data: Dataset) -> str:
        """What one sample is, for the preflight line, e.g. `rows x 1000 features`."""
        ...

    def announce_line(self, flops_per_sample: float) -> str | None:
        """An extra line of derived quantities printed once before training (None: nothing)."""
        ...

    def metric_text(self, value: float) -> str:
        """The metric in a progress line, e.g. `val_acc 91.25%`."""
        ...

    def metric_csv(self, value: float) -> str:
        """The metric in its metrics.csv column."""
        ...

    def speed_text(self, samples_per_s: float) -> str:
        """Throughput in a progress line, e.g. `1234 samples/s`."""
        ...

    def summary_facts(self, metric: float, samples_per_s: float) -> dict[str, Any]:
        """The family's keys of summary.json (its metric under `metric_name` among them)."""
        ...

    def done_line(self, steps: int, summary: dict[str, Any], run_dir: Path) -> str:
        """The closing line of a finished run."""
        ...


@dataclass(frozen=True)
class Family:
    """One model family. `name` is the value of `model.kind` that selects it."""

    name: str
    """`model.kind`, e.g. `mlp`; also the key of its exporter in `runtime.export.families`."""

    builtin_source: str | None
    """`data.source` of the family's embedded dataset (e.g. `builtin:mlp-binary`); None: the
    family has none (its data is always the user's)."""

    check_config: Callable[[TrainConfig], None]
    """Validate the family's keys and that `data.source` fits it; ConfigError names key, value, fix."""

    task: Callable[[TrainConfig], Task]
    """The run's task (a fresh one per call)."""

    model_for_weights: Callable[[ModelConfig, dict[str, torch.Tensor], Path], nn.Module]
    """An untrained model shaped to hold consolidated weights (WeightsError if they cannot fit);
    the third argument is the verified checkpoint directory, holding the files the task's
    `checkpoint_files` committed with it (e.g. a Hugging Face model's `config.json`)."""

    serving_extension: str | None = None
    """The serving extension its artifacts need (recorded as the manifest's `serving_extension`),
    e.g. `generate`; None: the standard inference routes only."""
