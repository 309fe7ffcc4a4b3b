"""What a model family's export half supplies to `runtime.export.pipeline.run_export`.

The pipeline owns the order of the stages, their numbering and log lines, the sizes table, the
manifest and the staging; an `Exporter` owns what differs per family. It is built once per export,
bound to the export's settings and the consolidated checkpoint (checking the settings that do not
apply to its family and loading its validation data), and then answers one call per stage:

  3. `compress()`: the pruned model and the `compression` report;
  4. `to_onnx(compressed, work)`: the served model (`Built`): a single `model.onnx` file (mlp, gpt:
     int8 from `fp32.onnx` / `pruned_fp32.onnx`), or a directory whose every file is the artifact
     (hf-causal-lm: `model.onnx` + `model.onnx.data` + `genai_config.json` + tokenizer files),
     with the manifest's `size_bytes` and the stage's line;
  5. `measure(compressed, built.paths)`: the `metrics` and `latency_ms` of the manifest;
  6. `gate(measured)`: GateError when the served model lost too much, else the gate's log line;
  and `io_spec()`, `manifest_sections()` for the manifest.

`refuse_flags` is the one place an exporter refuses settings meant for another family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from runtime.export.config import ExportConfig, ExportError
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
class Built:
    """What stage 4 produced: the served model and what the manifest says of its size."""

    artifact: Path
    """The served model: an ONNX file (staged as `model.onnx`), or a directory holding
    `model.onnx` whose every file is staged (external weight data, runtime config, tokenizer)."""
    paths: dict[str, Path]
    """Models by key for `measure` (e.g. `fp32`, `pruned_fp32`, `int8`)."""
    sizes: dict[str, Any]
    """The manifest's `size_bytes` section."""
    line: str
    """The stage's progress line."""

    @classmethod
    def onnx_files(cls, paths: dict[str, Path], consolidated: Path, quantization: str) -> Built:
        """The single-file form: `paths["int8"]` is served; sizes of every ONNX file and the
        consolidated safetensors, and the int8 / fp32 ONNX ratio."""
        sizes: dict[str, Any] = {f"{name}_onnx": path.stat().st_size for name, path in paths.items()}
        sizes["fp32_safetensors"] = consolidated.stat().st_size
        sizes["int8_vs_fp32_onnx"] = round(sizes["int8_onnx"] / sizes["fp32_onnx"], 4)
        line = (
            f"ONNX fp32 {sizes['fp32_onnx']} bytes -> pruned {sizes['pruned_fp32_onnx']} -> int8 ({quantization}) "
            f"{sizes['int8_onnx']} bytes ({sizes['int8_vs_fp32_onnx']:.3f}x)"
        )
        return cls(artifact=paths["int8"], paths=paths, sizes=sizes, line=line)


def refuse_flags(flags: list[str], family: str, why: str) -> None:
    """ExportError naming `flags` (given to an export of `family`) when there are any."""
    if flags:
        raise ExportError(f"{', '.join(flags)}: not used for {family} models ({why}); drop them")


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

    def to_onnx(self, compressed: Compressed, work: Path) -> Built:
        """Build the served model (and the models `measure` compares it with) under `work`."""
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
