"""Export: consolidate a ZeRO checkpoint, prune, ONNX + int8, evaluate, gate, stage the artifact.

Command: `runtime.export.command` (`stratus export`); the stages: `runtime.export.pipeline`;
what differs per model family: its exporter in `runtime.export.families`.
"""
