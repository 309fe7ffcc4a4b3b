"""Named training presets: one function each, returning a validated `TrainConfig`.

`python -m runtime train --preset NAME` starts from one; `--config FILE` and `--set KEY=VALUE`
override its fields (`runtime.train.loading`).
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.train.config import BUILTIN_TEXT_SOURCE, DataConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig


def mlp_binary() -> TrainConfig:
    """The founding brief's model: 1000 -> Dense(100, ReLU) -> Dense(1, sigmoid), BCE, Adam.

    10 epochs at batch 32 (global: 2 ranks x 16 per rank x 1 accumulation step by default).
    """
    return TrainConfig(preset="mlp-binary", run_name="mlp-binary")


def mlp_large() -> TrainConfig:
    """A wider MLP (~25M parameters) on 4096 features: the ZeRO memory/throughput benchmark model."""
    return TrainConfig(
        preset="mlp-large",
        run_name="mlp-large",
        epochs=1,
        global_batch_size=128,
        model=ModelConfig(hidden_sizes=(4096, 2048)),
        data=DataConfig(num_features=4096, num_samples=4096),
    )


def gpt_tiny() -> TrainConfig:
    """A ~0.9M-parameter GPT (4 layers x 128 wide, 4 heads, context 128) on the standard library's
    sources: the test model. Global batch 16 sequences = 2 ranks x 8 = 2,048 tokens per step."""
    return TrainConfig(
        preset="gpt-tiny",
        run_name="gpt-tiny",
        epochs=1,
        max_steps=200,
        global_batch_size=16,
        log_every=10,
        eval_every=100,
        checkpoint_every=200,
        model=ModelConfig(kind="gpt", num_layers=4, num_heads=4, embed_dim=128, seq_len=128),
        data=DataConfig(source=BUILTIN_TEXT_SOURCE, max_bytes=1_000_000, val_fraction=0.1),
        optim=OptimConfig(lr=2e-3),
    )


def gpt_small() -> TrainConfig:
    """A ~32M-parameter GPT (10 layers x 512 wide, 8 heads of 64, context 128) for CPU machines.

    Global batch 8 sequences = 2 ranks x 4 = 1,024 tokens per step, about 0.2 GFLOP per token of
    training: a few seconds per step on a 2-core AVX-512 machine (minutes per hundred steps).
    ZeRO-2 with the optimizer (fp32 Adam state and step) offloaded to DeepSpeedCPUAdam.
    """
    return TrainConfig(
        preset="gpt-small",
        run_name="gpt-small",
        epochs=1,
        max_steps=200,
        global_batch_size=8,
        log_every=10,
        eval_every=100,
        checkpoint_every=100,
        model=ModelConfig(kind="gpt", num_layers=10, num_heads=8, embed_dim=512, seq_len=128),
        data=DataConfig(source=BUILTIN_TEXT_SOURCE, val_fraction=0.05, val_max_sequences=32),
        optim=OptimConfig(lr=6e-4),
    )


def gpt_350m() -> TrainConfig:
    """A ~300M-parameter GPT (24 layers x 1024, 16 heads, context 1024; GPT-2 medium's shape with
    byte tokens) for one g5.12xlarge (4 x A10G 24 GiB): ZeRO-2, bf16, activation checkpointing,
    micro batch 8, 4 accumulation steps: global batch 128 sequences = 131k tokens per step.
    Model state ~300M x 16 bytes = 4.8 GB, of which ZeRO-2 keeps the bf16 weights (0.6 GB) plus a
    quarter of gradients and Adam state per GPU."""
    return TrainConfig(
        preset="gpt-350m",
        run_name="gpt-350m",
        epochs=1,
        global_batch_size=128,
        log_every=10,
        eval_every=500,
        checkpoint_every=500,
        model=ModelConfig(
            kind="gpt", num_layers=24, num_heads=16, embed_dim=1024, seq_len=1024, activation_checkpointing=True
        ),
        data=DataConfig(source=BUILTIN_TEXT_SOURCE, max_bytes=0, val_fraction=0.02),
        optim=OptimConfig(lr=3e-4, betas=(0.9, 0.95)),
        parallel=ParallelConfig(zero_stage=2, offload="none", grad_accum_steps=4, precision="bf16"),
    )


def gpt_1_3b() -> TrainConfig:
    """A ~1.2B-parameter GPT (24 layers x 2048, 16 heads of 128, context 2048) for one
    p4d.24xlarge (8 x A100 40 GiB): ZeRO-3 (model state ~19 GB sharded 8 ways), bf16, activation
    checkpointing, micro batch 4, 8 accumulation steps: global batch 256 sequences = 524k tokens
    per step. Add `parallel.offload=optimizer` on 24 GiB GPUs (g5.48xlarge)."""
    return TrainConfig(
        preset="gpt-1.3b",
        run_name="gpt-1.3b",
        epochs=1,
        global_batch_size=256,
        log_every=10,
        eval_every=500,
        checkpoint_every=500,
        model=ModelConfig(
            kind="gpt", num_layers=24, num_heads=16, embed_dim=2048, seq_len=2048, activation_checkpointing=True
        ),
        data=DataConfig(source=BUILTIN_TEXT_SOURCE, max_bytes=0, val_fraction=0.02),
        optim=OptimConfig(lr=2e-4, betas=(0.9, 0.95)),
        parallel=ParallelConfig(zero_stage=3, offload="none", grad_accum_steps=8, precision="bf16"),
    )


def hf_tiny() -> TrainConfig:
    """The test preset of the hf-causal-lm family: a ~1.3M-parameter Llama-architecture model
    (`stratus model tiny DIR`) fine-tuned on a chat JSONL, 2 ranks x 4 windows of 64 tokens = global
    batch 8 (512 tokens per step), 6 steps, ZeRO-3 without offload. Model state: 1.3M x 16 bytes
    (fp32 weights 4 + gradients 4 + Adam moments 8) = 21 MB, 10 MB per rank under ZeRO-3.
    Needs `--model-dir` and `--data`."""
    return TrainConfig(
        preset="hf-tiny",
        run_name="hf-tiny",
        epochs=1,
        max_steps=6,
        global_batch_size=8,
        log_every=1,
        eval_every=3,
        checkpoint_every=6,
        model=ModelConfig(kind="hf-causal-lm", seq_len=64),
        data=DataConfig(source="chat.jsonl", val_fraction=0.1, val_max_sequences=16),
        optim=OptimConfig(lr=1e-3),
        parallel=ParallelConfig(zero_stage=3, offload="none"),
    )


def hf_1b_g5() -> TrainConfig:
    """A ~1.2B Llama-architecture model (e.g. Llama 3.2 1B: 16 layers x 2048, context 2048 here)
    fully fine-tuned on one g5.12xlarge or g6.12xlarge (4 x 24 GiB): ZeRO-3, bf16, activation
    checkpointing, micro batch 4, 8 accumulation steps: global batch 128 x 2,048 = 262k tokens per
    step. Memory per GPU: bf16 weights 2.4 GB + bf16 gradients 2.4 GB + fp32 master weights and
    Adam moments 1.2B x 12 = 14.4 GB, all divided by 4 ranks = 4.8 GB; activations with
    checkpointing ~ layers x micro x seq x hidden x 2 bytes = 16 x 4 x 2048 x 2048 x 2 = 0.5 GB plus
    one layer's recomputation and the logits (4 x 2048 x 128k vocab x 4 bytes = 4.3 GB, fp32):
    ~10 GB of 24. Needs `--model-dir` and `--data`."""
    return TrainConfig(
        preset="hf-1b-g5",
        run_name="hf-1b",
        epochs=1,
        global_batch_size=128,
        log_every=10,
        eval_every=200,
        checkpoint_every=200,
        model=ModelConfig(kind="hf-causal-lm", seq_len=2048, activation_checkpointing=True),
        data=DataConfig(source="chat.jsonl", val_fraction=0.02, val_max_sequences=64),
        optim=OptimConfig(lr=2e-5, betas=(0.9, 0.95)),
        parallel=ParallelConfig(zero_stage=3, offload="none", grad_accum_steps=8, precision="bf16"),
    )


def hf_8b_p5() -> TrainConfig:
    """An 8B Llama-architecture model (e.g. Llama 3.1 8B: 32 layers x 4096, context 4096 here)
    fully fine-tuned on one p4d.24xlarge (8 x A100 40 GiB) or p5.48xlarge (8 x H100 80 GiB):
    ZeRO-3, bf16, activation checkpointing, micro batch 2, 8 accumulation steps: global batch 128 x
    4,096 = 524k tokens per step. Memory per GPU: 8B x (2 bf16 weights + 2 bf16 gradients + 12 fp32
    master weights and Adam moments) = 128 GB over 8 ranks = 16 GB; activations with checkpointing
    ~ 32 layers x 2 x 4096 x 4096 x 2 bytes = 2.1 GB plus one layer's recomputation (~5 GB) and the
    fp32 logits (2 x 4096 x 128k x 4 = 4.2 GB): ~28 GB of 40 on p4d. Fewer GPUs or longer
    sequences: add `parallel.offload=optimizer` (moves the 12 bytes/parameter to host memory) or use
    LoRA (`model.lora_rank=16`: weights only, 2 bytes/parameter). Needs `--model-dir` and `--data`."""
    return TrainConfig(
        preset="hf-8b-p5",
        run_name="hf-8b",
        epochs=1,
        global_batch_size=128,
        log_every=10,
        eval_every=200,
        checkpoint_every=200,
        model=ModelConfig(kind="hf-causal-lm", seq_len=4096, activation_checkpointing=True),
        data=DataConfig(source="chat.jsonl", val_fraction=0.02, val_max_sequences=64),
        optim=OptimConfig(lr=1e-5, betas=(0.9, 0.95)),
        parallel=ParallelConfig(zero_stage=3, offload="none", grad_accum_steps=8, precision="bf16"),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "mlp-binary": mlp_binary,
    "mlp-large": mlp_large,
    "gpt-tiny": gpt_tiny,
    "gpt-small": gpt_small,
    "gpt-350m": gpt_350m,
    "gpt-1.3b": gpt_1_3b,
    "hf-tiny": hf_tiny,
    "hf-1b-g5": hf_1b_g5,
    "hf-8b-p5": hf_8b_p5,
}
