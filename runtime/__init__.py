"""stratus runtime: train with DeepSpeed ZeRO, export (prune + int8 ONNX), publish, serve."""

__version__ = "0.1.0"
