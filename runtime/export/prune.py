"""Pruning of the MLPs built by `runtime.models.build_mlp` (Linear layers alternating with ReLU).

- `prune_structured` removes whole hidden units: row j of hidden Linear i (and its bias) and
  column j of Linear i+1. The result is a smaller dense `nn.Sequential` with the same layer names
  and call signature, so parameter count, ONNX size and latency really drop.
- `prune_magnitude` zeroes the smallest-|w| fraction of each Linear weight with
  `torch.nn.utils.prune.l1_unstructured`; the mask stays attached (weight = weight_orig * mask)
  during `finetune`, so pruned weights stay zero, and `make_permanent` folds it in before export.
- `sparsity_report` measures what was achieved per layer (it counts zeros; it does not trust the
  requested fraction).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune


def linear_layers(model: nn.Sequential) -> list[tuple[str, nn.Linear]]:
    """`(name, layer)` of each Linear in order; checks the Linear/ReLU alternation pruning relies on."""
    found = [(name, m) for name, m in model.named_children() if isinstance(m, nn.Linear)]
    children = list(model.children())
    for i, m in enumerate(children):
        expected = nn.Linear if i % 2 == 0 else nn.ReLU
        if not isinstance(m, expected):
            raise ValueError(f"layer {i} is {type(m).__name__}, expected {expected.__name__}: not a build_mlp model")
    if not found or len(children) % 2 == 0:
        raise ValueError("model must end with a Linear layer (a build_mlp model)")
    return found


def unit_scores(w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """Importance of each hidden unit: ||(row, bias)||_2 of the layer * ||column||_2 of the next."""
    # A unit matters through what it reads (its row and bias) and how much the next layer reads
    # it (its column); the product is small if either is, e.g. a unit the next layer ignores.
    incoming = torch.sqrt(w_in.pow(2).sum(dim=1) + b_in.pow(2))
    outgoing = w_out.pow(2).sum(dim=0).sqrt()
    return incoming * outgoing


def prune_structured(model: nn.Sequential, fraction: float) -> tuple[nn.Sequential, list[list[int]]]:
    """Remove `round(fraction * width)` hidden units of every hidden layer (at least 1 kept).

    Args:
        model: a `build_mlp` model; not modified.
        fraction: share of each hidden layer's units to remove, in [0, 1).

    Returns:
        The pruned copy (new, smaller Linear layers) and, per hidden layer, the kept unit indices
        (ascending, into the original layer).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"structured fraction {fraction} must be in [0, 1)")
    layers = [m for _, m in linear_layers(model)]
    with torch.no_grad():
        weights = [m.weight.detach().clone() for m in layers]
        biases = [m.bias.detach().clone() for m in layers]
        kept_all: list[list[int]] = []
        for i in range(len(layers) - 1):
            width = weights[i].shape[0]
            num_keep = max(1, width - round(fraction * width))
            scores = unit_scores(weights[i], biases[i], weights[i + 1])
            keep = torch.sort(torch.topk(scores, num_keep).indices).values
            weights[i], biases[i] = weights[i][keep], biases[i][keep]
            weights[i + 1] = weights[i + 1][:, keep]
            kept_all.append(keep.tolist())
    new_layers: list[nn.Module] = []
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        linear = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(w)
            linear.bias.copy_(b)
        new_layers.append(linear)
        if i < len(weights) - 1:
            new_layers.append(nn.ReLU())
    return nn.Sequential(*new_layers).eval(), kept_all


def prune_magnitude(model: nn.Sequential, sparsity: float) -> nn.Sequential:
    """Attach an L1-magnitude mask zeroing `sparsity` of each Linear weight (in place; returned).

    Biases are not pruned. Call `make_permanent` before export.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} must be in [0, 1)")
    if sparsity == 0.0:
        return model
    for _, layer in linear_layers(model):
        torch_prune.l1_unstructured(layer, name="weight", amount=sparsity)
    return model


def make_permanent(model: nn.Sequential) -> nn.Sequential:
    """Fold pruning masks into plain weights (in place; returned); a no-op without masks."""
    for _, layer in linear_layers(model):
        if torch_prune.is_pruned(layer):
            torch_prune.remove(layer, "weight")
    return model


def finetune(
    model: nn.Sequential,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `model` (logits) with Adam + BCE-with-logits on rows `x`, `y` for `steps` steps.

    Plain PyTorch, one process. Batches walk seeded permutations of the rows (the only randomness,
    so a run is reproducible). Pruning masks stay
    attached, so pruned weights remain zero. Returns the loss of every step.
    """
    if steps <= 0:
        return []
    if len(x) < 1:
        raise ValueError("fine-tune needs at least one training row")
    batch_size = min(batch_size, len(x))
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    order, pos, losses = rng.permutation(len(x)), 0, []
    model.train()
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(x)), 0
        idx = torch.from_numpy(order[pos : pos + batch_size])
        pos += batch_size
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt[idx]).squeeze(-1), yt[idx])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return losses


def sparsity_report(model: nn.Sequential, original: nn.Sequential) -> list[dict]:
    """Per Linear layer: shape before/after, parameters before/after, achieved weight sparsity.

    `original` is the unpruned model, for the "before" columns. Masks, if still attached, count.
    """
    rows = []
    before = dict(linear_layers(original))
    for name, layer in linear_layers(model):
        weight = layer.weight.detach()
        orig = before[name]
        rows.append(
            {
                "layer": name,
                "shape_before": [orig.out_features, orig.in_features],
                "shape_after": [layer.out_features, layer.in_features],
                "params_before": orig.weight.numel() + orig.bias.numel(),
                "params_after": weight.numel() + layer.bias.numel(),
                "weight_sparsity": float((weight == 0).sum()) / weight.numel(),
                # Sparsity relative to the original dense layer: removed units count as zeros.
                "effective_sparsity": 1.0 - float((weight != 0).sum()) / orig.weight.numel(),
            }
        )
    return rows


def nonzero_parameters(model: nn.Module) -> int:
    """Linear weights and biases that are not exactly zero (attached masks applied)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(sum((m.weight.detach() != 0).sum() + (m.bias.detach() != 0).sum() for m in layers))


def clone(model: nn.Sequential) -> nn.Sequential:
    """A deep copy, so pruning never touches the consolidated model."""
    return copy.deepcopy(model)
