"""Training: config and presets, data, the model, DeepSpeed ZeRO, the loop (checkpoints: `runtime.checkpoint`).

Command: `runtime.train.command` (`stratus train`). Flow and folder map: docs/architecture.md.
"""
