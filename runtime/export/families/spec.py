"""What a model family's export half supplies to `runtime.export.pipeline.run_export`.

The pipeline owns the order of the stages, their numbering and log lines, the sizes table, the
manifest and the staging; an `Exporter` owns what differs per family. It is built once per export,
bound to the export's settings and the consolidated checkpoint (checking the settings that do not
apply to its family and loading its validation data), and then answers one call per stage:

  3. `compress()`: the pruned model and the `compression` report;
  4. `to_onnx(compressed, work)`: `fp32.onnx`, `pruned_fp32.onnx` and the int8 `model.onnx`;
  5. `measure(compressed, paths)`: the `metrics` and `latency_ms` of the manifest;
  6. `gate(measured)`: GateError when the int8 model lost too much, else the gate's log line;
  and `io_spec()`, `manifest_sections()` for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from runtime.export.config import ExportConfig
from runtime.export.consolidate import Consolidated


@dataclass
class Compressed:
    """What stage 3 produced: both models as they are exported and served, and the report."""

    fp32: nn.Module
    """The checkpoint's model (eval mode), taking the served inputs."""
    pruned: nn.Module
    """The compressed model (the same object as `fp32` when nothing was pruned)."""
    report: dict[str, Any]
    """The manifest's `compression` section."""
    line: str
    """The stage's progress line."""
    details: list[str] = field(default_factory=list)
    """Further lines printed under it (e.g. one per pruned layer)."""


@dataclass
class Measured:
    """What stage 5 produced: the manifest's `metrics` and `latency_ms`, and the progress line."""

    metrics: dict[str, Any]
    latency: dict[str, Any]
    line: str


class Exporter(Protocol):
    """One family's export steps, bound to an export's settings and one consolidated checkpoint."""

    quantization: str
    """How `model.onnx` is quantized, as the sizes line names it (e.g. `dynamic`)."""

    def __init__(self, cfg: ExportConfig, ckpt: Consolidated):
        """Raises ExportError for settings the family cannot use or data it cannot read."""
        ...

    def compress(self) -> Compressed: ...

    def to_onnx(self, compressed: Compressed, work: Path) -> dict[str, Path]:
        """ONNX files in `work` by key: `fp32`, `pruned_fp32` and `int8` (the artifact's model)."""
        ...

    def measure(self, compressed: Compressed, paths: dict[str, Path]) -> Measured: ...

    def gate(self, measured: Measured) -> str:
        """Record the loss in `measured.metrics`; GateError if it exceeds the tolerance (nothing
        is staged), else the gate's progress line."""
        ...

    def io_spec(self) -> tuple[list[dict], list[dict]]:
        """The manifest's `inputs` and `outputs` tensor specs."""
        ...

    def manifest_sections(self) -> dict[str, Any]:
        """Further manifest sections the served model needs (e.g. `language_model`)."""
        ...
