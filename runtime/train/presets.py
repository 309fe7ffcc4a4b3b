"""Named training presets: one function each, returning a validated `TrainConfig`.

`python -m runtime train --preset NAME` starts from one; `--config FILE` and `--set KEY=VALUE`
override its fields (`runtime.train.loading`).
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.train.config import DataConfig, ModelConfig, TrainConfig


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


PRESETS: dict[str, Callable[[], TrainConfig]] = {"mlp-binary": mlp_binary, "mlp-large": mlp_large}
