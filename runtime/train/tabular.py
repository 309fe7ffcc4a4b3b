"""Feature standardisation for tabular data: statistics of the training split only.

    stats = FeatureStats.fit(data.x[data.train_idx])
    x_std = stats.apply(data.x)                   # (x - mean) / scale, float32

Why: raw columns on very different scales (thousands beside fractions) make the first Adam steps
blow up and the validation accuracy swing from epoch to epoch. The statistics come from the
training rows only (no validation leakage), are saved with every checkpoint as
`feature_stats.json` (covered by its manifest), and the export puts `Standardize` in front of the
model inside the ONNX graph, so the served model takes raw rows. A constant column (standard
deviation below `MIN_STD` relative to its magnitude) gets scale 1: it is centred to zero and
carries no signal, instead of being divided by ~0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

STATS_FILE = "feature_stats.json"
MIN_STD = 1e-6


@dataclass(frozen=True)
class FeatureStats:
    mean: np.ndarray
    """Per-feature mean of the training split (float64)."""
    scale: np.ndarray
    """Per-feature standard deviation of the training split; 1 for constant columns (float64)."""
    constant_columns: tuple[int, ...] = ()
    """Indices of the columns that are constant in the training split."""

    @classmethod
    def fit(cls, x_train: np.ndarray) -> FeatureStats:
        x = np.asarray(x_train, dtype=np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
        constant = std <= MIN_STD * np.maximum(1.0, np.abs(mean))
        columns = tuple(int(i) for i in np.flatnonzero(constant))
        return cls(mean=mean, scale=np.where(constant, 1.0, std), constant_columns=columns)

    @classmethod
    def identity(cls, num_features: int) -> FeatureStats:
        return cls(mean=np.zeros(num_features), scale=np.ones(num_features))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)

    def to_json(self) -> bytes:
        data = {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "constant_columns": [*self.constant_columns]}
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> FeatureStats:
        data = json.loads(raw)
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            constant_columns=tuple(data.get("constant_columns", ())),
        )


class Standardize(nn.Module):
    """`(x - mean) / scale` as a module: exported as Sub and Div nodes in front of the model."""

    def __init__(self, stats: FeatureStats):
        super().__init__()
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(stats.scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class RawFeatureModel(nn.Module):
    """A logits model trained on standardised rows, taking raw rows: `model(Standardize(x))`."""

    def __init__(self, logits_model: nn.Module, stats: FeatureStats):
        super().__init__()
        self.standardize = Standardize(stats)
        self.logits_model = logits_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_model(self.standardize(x))
