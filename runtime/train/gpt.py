"""A decoder-only transformer (GPT-2 style, pre-LayerNorm) written with PyTorch modules.

    model = build_gpt(ModelConfig(kind="gpt", num_layers=4, num_heads=4, embed_dim=128, seq_len=128))
    logits = model(ids)                       # ids int64 [batch, seq] -> logits [batch, seq, VOCAB_SIZE]

Attention is `torch.nn.functional.scaled_dot_product_attention(is_causal=True)` (fused kernels
where the device has them). Weights are initialised N(0, 0.02) inside each layer's own
`reset_parameters`, so the same values come out whether or not the layer is created under
`deepspeed.zero.Init` (which partitions a layer's parameters as soon as its constructor returns).
Input and output embeddings are not tied (a shared parameter complicates ZeRO-3 consolidation).

With `activation_checkpointing`, each block's activations are recomputed in the backward pass
(`torch.utils.checkpoint`, non-reentrant) instead of being kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from runtime.common.tokens import VOCAB_SIZE
from runtime.train.config import ModelConfig

INIT_STD = 0.02


class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=INIT_STD)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=INIT_STD)


class CausalSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(embed_dim, 3 * embed_dim)
        self.proj = Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, seq, self.num_heads, width // self.num_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, width))


class FeedForward(nn.Module):
    """`fc` (embed -> hidden), GELU, `proj` (hidden -> embed); export prunes hidden units here."""

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.fc = Linear(embed_dim, hidden)
        self.proj = Linear(hidden, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, ffn_hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dim)
        self.attn = CausalSelfAttention(embed_dim, num_heads)
        self.ln2 = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, ffn_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class GPT(nn.Module):
    """Token + learned position embeddings, `num_layers` blocks, final LayerNorm, vocabulary head."""

    def __init__(self, cfg: ModelConfig, ffn_sizes: Sequence[int] | None = None):
        super().__init__()
        sizes = list(ffn_sizes) if ffn_sizes is not None else [cfg.ffn_width] * cfg.num_layers
        if len(sizes) != cfg.num_layers:
            raise ValueError(f"need one feed-forward width per layer ({cfg.num_layers}), got {sizes}")
        self.seq_len = cfg.seq_len
        self.activation_checkpointing = cfg.activation_checkpointing
        self.wte = Embedding(VOCAB_SIZE, cfg.embed_dim)
        self.wpe = Embedding(cfg.seq_len, cfg.embed_dim)
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, h) for h in sizes)
        self.ln_f = nn.LayerNorm(cfg.embed_dim)
        self.head = Linear(cfg.embed_dim, VOCAB_SIZE, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(positions)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.head(self.ln_f(x))


def build_gpt(cfg: ModelConfig, ffn_sizes: Sequence[int] | None = None) -> GPT:
    """The GPT of `cfg`; `ffn_sizes` gives each block's feed-forward width (after pruning)."""
    return GPT(cfg, ffn_sizes)


def ffn_sizes_of(state_dict: dict[str, torch.Tensor], num_layers: int) -> list[int]:
    """Each block's feed-forward width as stored in a state dict (pruned models differ per block)."""
    return [int(state_dict[f"blocks.{i}.ffn.fc.weight"].shape[0]) for i in range(num_layers)]


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters used in matmuls per token: all but the embeddings' lookups, biases and norms."""
    d = cfg.embed_dim
    return cfg.num_layers * (4 * d * d + 2 * d * cfg.ffn_width) + d * VOCAB_SIZE


def flops_per_token(cfg: ModelConfig) -> int:
    """Training FLOPs per token (forward + backward, recomputation not counted):
    6 x matmul parameters + 12 x layers x seq_len x embed_dim for attention scores and values
    (the PaLM paper's appendix B accounting, the usual basis of model FLOP utilisation)."""
    return 6 * matmul_params(cfg) + 12 * cfg.num_layers * cfg.seq_len * cfg.embed_dim
