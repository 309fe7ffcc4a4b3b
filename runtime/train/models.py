"""Model builders. Models return logits; the sigmoid lives in the loss (stable) and in export."""

from __future__ import annotations

import torch
from torch import nn

from runtime.train.config import ModelConfig


def build_mlp(num_features: int, model: ModelConfig) -> nn.Sequential:
    """`num_features -> [Dense(h), ReLU] * len(hidden_sizes) -> Dense(num_outputs)` (logits).

    Layer names are `0, 1, 2, ...` as in `nn.Sequential`; pruning and export rely on Linear layers
    alternating with ReLU.
    """
    if num_features < 1:
        raise ValueError(f"num_features must be positive, got {num_features}")
    layers: list[nn.Module] = []
    width = num_features
    for hidden in model.hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, model.num_outputs))
    return nn.Sequential(*layers)


class WithSigmoid(nn.Module):
    """Wraps a logits model so that it outputs probabilities (the brief's Dense(1, sigmoid))."""

    def __init__(self, logits_model: nn.Module):
        super().__init__()
        self.logits_model = logits_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits_model(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
