"""Pruning of build_mlp models: structured (units really removed), magnitude, fine-tune, report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from runtime.export.prune import (
    finetune,
    linear_layers,
    make_permanent,
    nonzero_parameters,
    prune_magnitude,
    prune_structured,
    sparsity_report,
)
from runtime.train.config import ModelConfig
from runtime.train.models import build_mlp, count_parameters


def _model(hidden=(16, 12), d=10, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_mlp(d, ModelConfig(hidden_sizes=hidden)).eval()


def test_structured_pruning_shrinks_every_hidden_layer_and_the_next_layers_inputs():
    model = _model(hidden=(16, 12))
    pruned, kept = prune_structured(model, 0.5)
    shapes = [tuple(m.weight.shape) for _, m in linear_layers(pruned)]
    assert shapes == [(8, 10), (6, 8), (1, 6)]
    assert count_parameters(pruned) == (10 * 8 + 8) + (8 * 6 + 6) + (6 + 1)
    assert count_parameters(pruned) < count_parameters(model)
    assert [len(k) for k in kept] == [8, 6]
    assert [type(m).__name__ for m in pruned] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert count_parameters(model) == 10 * 16 + 16 + 16 * 12 + 12 + 12 + 1, "input model modified"


def test_structured_pruning_removes_exactly_the_units_nothing_reads():
    """Units whose outgoing weights are zero contribute nothing: cutting them is exact."""
    model = _model(hidden=(16, 12))
    dead_first, dead_second = [1, 3, 4, 8, 9, 11, 14, 15], [0, 2, 5, 7, 10, 11]
    with torch.no_grad():
        model[2].weight[:, dead_first] = 0.0
        model[4].weight[:, dead_second] = 0.0
    pruned, kept = prune_structured(model, 0.5)
    assert kept == [sorted(set(range(16)) - set(dead_first)), sorted(set(range(12)) - set(dead_second))]
    x = torch.randn(64, 10)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-6)


def test_structured_pruning_keeps_at_least_one_unit_and_rejects_bad_fractions():
    pruned, _ = prune_structured(_model(hidden=(3,)), 0.99)
    assert pruned[0].out_features == 1
    with pytest.raises(ValueError, match="structured fraction"):
        prune_structured(_model(), 1.0)


def test_pruning_refuses_models_that_are_not_linear_relu_chains():
    with pytest.raises(ValueError, match="expected ReLU"):
        prune_structured(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)), 0.5)
    with pytest.raises(ValueError, match="end with a Linear"):
        prune_magnitude(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), 0.5)


def test_magnitude_pruning_zeroes_the_smallest_weights_of_each_layer():
    model = _model(hidden=(40,), d=50)
    originals = [m.weight.detach().clone() for _, m in linear_layers(model)]
    prune_magnitude(model, 0.7)
    make_permanent(model)
    for (_, layer), orig in zip(linear_layers(model), originals, strict=True):
        w = layer.weight.detach()
        zero = w == 0
        assert abs(zero.float().mean().item() - 0.7) < 1.0 / w.numel() + 1e-9
        assert orig[~zero].abs().min() >= orig[zero].abs().max()
        torch.testing.assert_close(w[~zero], orig[~zero])
        assert not hasattr(layer, "weight_orig")


def test_finetune_keeps_pruned_weights_at_zero_and_lowers_the_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 10)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.float32)
    model = prune_magnitude(_model(hidden=(16,), d=10), 0.5)
    masks = [m.weight_mask.clone() for _, m in linear_layers(model)]
    losses = finetune(model, x, y, steps=150, lr=1e-2, batch_size=64, seed=0)
    assert len(losses) == 150
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    make_permanent(model)
    for (_, layer), mask in zip(linear_layers(model), masks, strict=True):
        assert torch.all(layer.weight[mask == 0] == 0)
    again = prune_magnitude(_model(hidden=(16,), d=10), 0.5)
    assert finetune(again, x, y, steps=150, lr=1e-2, batch_size=64, seed=0) == losses, "not reproducible"


def test_sparsity_report_measures_zeros_not_the_requested_fraction():
    model = _model(hidden=(8,), d=5)
    with torch.no_grad():
        model[0].weight[:2] = 0.0  # 10 of 40 weights
    pruned, _ = prune_structured(model, 0.0)
    report = sparsity_report(pruned, model)
    assert report[0]["layer"] == "0" and report[0]["weight_sparsity"] == pytest.approx(0.25)
    assert report[1]["weight_sparsity"] == 0.0
    shrunk, _ = prune_structured(model, 0.5)
    row = sparsity_report(shrunk, model)[0]
    assert row["shape_before"] == [8, 5] and row["shape_after"] == [4, 5]
    assert row["params_before"] == 48 and row["params_after"] == 24
    assert row["effective_sparsity"] >= 0.5
    assert nonzero_parameters(shrunk) <= count_parameters(shrunk)
