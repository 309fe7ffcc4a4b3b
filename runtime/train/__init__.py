"""Training: config and presets, data, the model, DeepSpeed ZeRO, the loop (checkpoints: `runtime.checkpoint`).

The model families (`model.kind` -> data, model, loss, metric, config checks): `runtime.train.families`.

Command: `runtime.train.command` (`stratus train`). Flow and folder map: docs/architecture.md.
"""
