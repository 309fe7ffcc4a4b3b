"""The export halves of the model families, registered under their family's name.

    exporter = exporter_for(ckpt.family)(cfg, ckpt)    # bound to one export and one checkpoint

The registry of families is `runtime.train.families` (training sits below export, so it cannot
name these); every family there has an exporter here (tests/test_layout.py checks both agree).
The protocol an exporter follows: `runtime.export.families.spec.Exporter`.
"""

from __future__ import annotations

from runtime.export.config import ExportError
from runtime.export.families.gpt import LanguageModelExporter
from runtime.export.families.hf import HfCausalLmExporter
from runtime.export.families.mlp import MlpExporter
from runtime.export.families.spec import Built, Compressed, Exporter, Measured
from runtime.train.families import Family

EXPORTERS: dict[str, type[Exporter]] = {
    "mlp": MlpExporter,
    "gpt": LanguageModelExporter,
    "hf-causal-lm": HfCausalLmExporter,
}
"""Family name (`model.kind`) -> its exporter class."""

__all__ = ["EXPORTERS", "Built", "Compressed", "Exporter", "Measured", "exporter_for"]


def exporter_for(family: Family) -> type[Exporter]:
    """The exporter of `family`; ExportError if the family has none (it cannot be exported)."""
    if family.name not in EXPORTERS:
        raise ExportError(f"model family {family.name!r} has no exporter; register one in runtime.export.families")
    return EXPORTERS[family.name]
