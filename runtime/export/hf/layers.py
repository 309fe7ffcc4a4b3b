"""Decoder-layer pruning of a Hugging Face causal LM, chosen by a measured criterion, and its heal.

    sims = layer_similarity(model, windows)          # one value per decoder layer
    pruned, removed = drop_layers(model, sims, 2)    # the two most similar layers go
    heal(pruned, train_windows, steps=100, lr=1e-4)  # optional short fine-tune

The criterion is the cosine similarity of each block's input and output hidden states, averaged
over every token of the validation windows: a block whose output is nearly its input changes the
residual stream least, so it is removed first (the angular-distance criterion of "The
Unreasonable Ineffectiveness of the Deeper Layers", Gromov et al. 2024, one layer at a time).
Removing layers shrinks every weight matrix of the served model by the same share, unlike
unstructured sparsity, which int4 storage cannot turn into bytes.

The model's config follows: `num_hidden_layers`, and `layer_types` where the architecture has it;
each kept attention block's `layer_idx` is renumbered so the key/value cache indexes stay dense.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EVAL_BATCH = 8
HEAL_BATCH = 8


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a `transformers` causal LM (`model.model.layers` for Llama, Mistral, Qwen...)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no decoder `layers` list; layer pruning needs a decoder-only LM")
    return layers


def _batches(windows: np.ndarray, batch: int):
    for i in range(0, len(windows), batch):
        yield torch.from_numpy(windows[i : i + batch])


@torch.inference_mode()
def layer_similarity(model: nn.Module, windows: np.ndarray) -> list[float]:
    """Mean cosine similarity of each decoder layer's input and output hidden states, over every
    token of `windows` ([n, seq_len + 1]; the inputs are `[:, :-1]`)."""
    layers = decoder_layers(model)
    totals = [0.0] * len(layers)
    seen = {"tokens": 0}
    inputs: dict[int, torch.Tensor] = {}

    def before(index):
        def hook(module, args, kwargs):
            inputs[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def after(index):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(inputs.pop(index).float(), out.float(), dim=-1)
            totals[index] += cos.sum().item()

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(after(i), with_kwargs=True))
    try:
        model.eval()
        for ids in _batches(windows, EVAL_BATCH):
            model(input_ids=ids[:, :-1], use_cache=False)
            seen["tokens"] += ids[:, :-1].numel()
    finally:
        for handle in handles:
            handle.remove()
    return [total / seen["tokens"] for total in totals]


def layers_to_remove(similarity: list[float], count: int) -> list[int]:
    """The indices of the `count` most similar layers (ties: the later layer), ascending."""
    if not 0 <= count < len(similarity):
        raise ValueError(f"cannot remove {count} of {len(similarity)} layers; keep at least one")
    ranked = sorted(range(len(similarity)), key=lambda i: (similarity[i], i), reverse=True)
    return sorted(ranked[:count])


def drop_layers(model: nn.Module, remove: list[int]) -> nn.Module:
    """A copy of `model` without the decoder layers `remove`; its config says how many are left."""
    pruned = copy.deepcopy(model).eval()
    layers = decoder_layers(pruned)
    keep = [i for i in range(len(layers)) if i not in set(remove)]
    kept = nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    pruned.get_decoder().layers = kept
    config = pruned.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    return pruned


def heal(model: nn.Module, windows: np.ndarray, *, steps: int, lr: float, seed: int = 0) -> list[float]:
    """Fine-tune `model` in place for `steps` AdamW steps of next-token loss on random batches of
    `windows`; returns the loss of each step. The model is left in eval mode."""
    gen = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    try:
        for _ in range(steps):
            ids = torch.from_numpy(windows[gen.integers(0, len(windows), min(HEAL_BATCH, len(windows)))])
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(loss.item()):
                raise ValueError(f"heal diverged (loss {loss.item()}); lower --finetune-lr or --heal-steps")
            losses.append(loss.item())
    finally:
        model.eval()
    return losses
