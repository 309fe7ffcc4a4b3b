"""stratus runtime: train with DeepSpeed ZeRO, export (prune + int8 ONNX), publish, serve.

One package per stage (`common`, `train`, `export`, `repository`, `serve`, `remote`) and
`contract` (what the stack and the runtime agree on). Map and data flow: docs/architecture.md.
"""

__version__ = "0.1.0"
"""The project's version: the one place it is written (pyproject.toml reads it from here)."""
