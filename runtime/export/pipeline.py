"""The export pipeline as data: checkpoint -> fp32 weights -> pruned -> ONNX -> int8 -> measured -> artifact.

    result = run_export(ExportConfig(run_dir=Path("runs/mlp-binary")))

One pipeline for every model family: it owns the order of the stages, their numbers and progress
lines, the sizes table, the manifest and the staging; the checkpoint's family supplies an exporter
(`runtime.export.families`, bound once to the settings and the checkpoint) for what differs:
  1. `consolidate.load`: verify the checkpoint's manifest, merge the ZeRO shards to fp32, build the
     family's model; then the model name is checked, before anything is written, and
  2. `consolidate.save_consolidated`: `<run>/consolidated/<tag>.safetensors` (the checkpoint in portable form);
  3. `exporter.compress`: the family's pruning (mlp: structured + magnitude + fine-tune; gpt: FFN units);
  4. `exporter.to_onnx`: the served model (mlp, gpt: FP32 ONNX of the original and the pruned
     model, int8 with ONNX Runtime; hf-causal-lm: onnxruntime-genai's int4/int8/fp32 build, a
     directory with external weight data) and its sizes;
  5. `exporter.measure`: validation metrics of fp32 / pruned / served and the latency table;
  6. `exporter.gate`, then `stage.stage_artifact` and, with `publish`, the repository.
The manifest records the family's `serving_extension` (e.g. `generate`; null: standard routes only).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runtime.common.fsutil import sha256_file
from runtime.common.log import get_logger
from runtime.contract import model_name_problem
from runtime.export import consolidate
from runtime.export.config import ExportConfig, ExportError, check_out_dir
from runtime.export.consolidate import Consolidated
from runtime.export.families import Exporter, exporter_for
from runtime.export.stage import stage_artifact, versions
from runtime.train.models import count_parameters

log = get_logger()
STAGES = 6


def _stage(n: int, text: str, *details: str) -> None:
    log.info(f"[{n}/{STAGES}] %s", text)
    for line in details:
        log.info("      %s", line)


@dataclass
class ExportResult:
    """What `run_export` produced."""

    out_dir: Path
    """The staged version directory (`model.onnx` + `manifest.json`, and for a directory
    artifact every other file of the served model)."""
    manifest: dict[str, Any]
    """Its manifest."""
    version: int | None
    """The published version, or None without `publish`."""


def _model_name(cfg: ExportConfig, ckpt: Consolidated) -> str:
    name = cfg.model_name or ckpt.config.preset
    problem = model_name_problem(name)
    if cfg.publish and problem:
        raise ExportError(f"--model-name: {problem}")
    return name


def _provenance(ckpt: Consolidated) -> dict[str, Any]:
    return {
        "checkpoint_tag": ckpt.tag,
        "checkpoint_step": ckpt.manifest.get("step"),
        "checkpoint_manifest_sha256": ckpt.manifest_sha256,
        "config_digest": ckpt.manifest.get("config_digest"),  # the config as trained
        "preset": ckpt.config.preset,
        "zero_stage": ckpt.manifest.get("zero_stage"),
        "world_size": ckpt.manifest.get("world_size"),
        "data_source": ckpt.config.data.source,
        "consolidated_sha256": sha256_file(ckpt.path)[0],
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _export_model(exporter: Exporter, work: Path) -> tuple[Path, dict[str, Any]]:
    """Stages 3-6 through the family's exporter: (the served model's file or directory, the
    manifest's measurements)."""
    compressed = exporter.compress()
    _stage(3, compressed.line, *compressed.details)
    built = exporter.to_onnx(compressed, work)
    _stage(4, built.line)
    measured = exporter.measure(compressed, built.paths)
    _stage(5, measured.line)
    _stage(6, exporter.gate(measured))
    return built.artifact, {
        "compression": compressed.report,
        "metrics": measured.metrics,
        "latency_ms": measured.latency,
        "size_bytes": built.sizes,
    }


def run_export(cfg: ExportConfig) -> ExportResult:
    """Run all stages (see the module docstring).

    Raises:
        NoCheckpointError: no checkpoint verifies (nothing staged).
        ExportError: bad checkpoint tag, data, model name or output directory (nothing staged).
        GateError: the family's gate failed (mlp: the accuracy drop exceeds `cfg.tolerance`; gpt:
            the perplexity increase `cfg.perplexity_tolerance`); nothing staged or published.
        ArtifactError, PublishError: staging or publishing failed (runtime.repository).
    """
    out_dir = cfg.resolved_out_dir
    check_out_dir(out_dir)  # fail before minutes of work; checked again when staging
    ckpt = consolidate.load(cfg.checkpoints_dir, cfg.checkpoint)
    _stage(1, f"checkpoint {ckpt.tag_dir} verifies against its manifest")
    model_name = _model_name(cfg, ckpt)  # before anything is written
    ckpt.path = consolidate.save_consolidated(ckpt, cfg.resolved_consolidated_dir)
    m = ckpt.manifest
    _stage(
        2,
        f"consolidated ZeRO-{m.get('zero_stage')} ({m.get('world_size')} ranks, step {m.get('step')}): "
        f"{ckpt.family.name} model with {count_parameters(ckpt.model)} fp32 parameters -> {ckpt.path}",
    )
    exporter = exporter_for(ckpt.family)(cfg, ckpt)
    with tempfile.TemporaryDirectory(prefix="stratus-export-") as tmp:
        model_path, measured = _export_model(exporter, Path(tmp))
        inputs, outputs = exporter.io_spec()
        info = {
            "model_name": model_name,
            "inputs": inputs,
            "outputs": outputs,
            "serving_extension": ckpt.family.serving_extension,
            **measured,
            **exporter.manifest_sections(),
            "provenance": _provenance(ckpt),
            "versions": versions(),
        }
        manifest = stage_artifact(out_dir, model_path, info)
    log.info("      staged %s", out_dir)
    version = None
    if cfg.publish:
        from runtime.repository.publish import publish

        version = publish(out_dir, cfg.publish, model_name=model_name, kms_key_id=cfg.kms_key_id)
    return ExportResult(out_dir=out_dir, manifest=manifest, version=version)
