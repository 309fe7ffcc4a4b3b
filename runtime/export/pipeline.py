"""The export pipeline as data: checkpoint -> fp32 weights -> pruned -> ONNX -> int8 -> measured -> artifact.

    result = run_export(ExportConfig(run_dir=Path("runs/mlp-binary")))

Each stage takes what the previous one produced and is entered once (one progress line each):
  1. `consolidate.load`: verify the checkpoint's manifest, merge the ZeRO shards to fp32;
  2. `consolidate.save_consolidated`: `<run>/consolidated/<tag>.safetensors` (the checkpoint in portable form);
  3. `compress`: structured pruning, magnitude pruning, fine-tune (`runtime.export.prune`);
  4. `onnx_export.build`: FP32 ONNX of the original and the pruned model, int8 with ONNX Runtime;
  5. `evaluate.measure`: validation metrics of fp32 / pruned / int8 and the latency table;
  6. `evaluate.gate`, then `stage.stage_artifact` and, with `publish`, the repository.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from runtime.common.fsutil import sha256_file
from runtime.common.log import get_logger
from runtime.contract import model_name_problem
from runtime.export import consolidate, evaluate, lm, onnx_export, prune
from runtime.export.config import ExportConfig, ExportError
from runtime.export.consolidate import Consolidated
from runtime.export.stage import check_out_dir, stage_artifact, versions
from runtime.train.data import DataError, Dataset, load_dataset
from runtime.train.models import count_parameters
from runtime.train.tabular import FeatureStats, RawFeatureModel

log = get_logger()
STAGES = 6


def _stage(n: int, text: str, *args: Any) -> None:
    log.info(f"[{n}/{STAGES}] {text}", *args)


def _load_data(ckpt: Consolidated) -> Dataset:
    cfg = ckpt.config
    try:
        data = load_dataset(cfg.data, cfg.seed)
    except DataError as e:
        raise ExportError(f"validation data of the checkpoint's config: {e}") from None
    if data.num_features != ckpt.num_features:
        raise ExportError(
            f"data {data.source} has {data.num_features} features but checkpoint {ckpt.tag} was "
            f"trained on {ckpt.num_features}; export with the data the run was trained on"
        )
    return data


def standardized(data: Dataset, stats: FeatureStats | None) -> Dataset:
    """The data as the model was trained on it (standardised with the checkpoint's statistics)."""
    return dataclasses.replace(data, x=stats.apply(data.x)) if stats is not None else data


def raw_input_model(logits_model: nn.Module, stats: FeatureStats | None) -> nn.Module:
    """The model as it is exported and served: raw rows in, standardisation inside the graph."""
    return RawFeatureModel(logits_model, stats).eval() if stats is not None else logits_model


def _preprocessing(stats: FeatureStats | None) -> dict[str, Any]:
    if stats is None:
        return {"standardize": False}
    return {
        "standardize": True,
        "where": "inside model.onnx: (input - mean) / scale before the first layer; send raw rows",
        "stats_from": "training split",
        "constant_columns": list(stats.constant_columns),
    }


def compress(
    cfg: ExportConfig, ckpt: Consolidated, fp32_model: nn.Sequential, data: Dataset
) -> tuple[nn.Sequential, dict]:
    """Structured pruning, magnitude pruning, fine-tune; returns the pruned model and its report."""
    pruned = prune.clone(fp32_model)
    if cfg.structured_fraction > 0:
        pruned, _ = prune.prune_structured(pruned, cfg.structured_fraction)
    prune.prune_magnitude(pruned, cfg.sparsity)
    lr = cfg.finetune_lr or ckpt.config.optim.lr
    batch = cfg.finetune_batch_size or ckpt.config.global_batch_size
    x, y = data.x[data.train_idx], data.y[data.train_idx]
    losses = prune.finetune(pruned, x, y, steps=cfg.finetune_steps, lr=lr, batch_size=batch, seed=ckpt.config.seed)
    prune.make_permanent(pruned)
    report = {
        **cfg.compression_settings(),
        "finetune_lr": lr,
        "finetune_batch_size": batch,
        "finetune_last_loss": losses[-1] if losses else None,
        "params_fp32": count_parameters(fp32_model),
        "params_pruned": count_parameters(pruned),
        "nonzero_params_pruned": prune.nonzero_parameters(pruned),
        "layers": prune.sparsity_report(pruned, fp32_model),
    }
    _stage(
        3,
        "pruned: %d -> %d parameters (%d nonzero); fine-tune %d steps%s",
        report["params_fp32"],
        report["params_pruned"],
        report["nonzero_params_pruned"],
        len(losses),
        f", last loss {losses[-1]:.4f}" if losses else "",
    )
    for row in report["layers"]:
        log.info(
            "      layer %s: %s -> %s, weight sparsity %.1f%% (%.1f%% of the original layer)",
            row["layer"],
            row["shape_before"],
            row["shape_after"],
            100 * row["weight_sparsity"],
            100 * row["effective_sparsity"],
        )
    return pruned, report


def build_onnx(
    cfg: ExportConfig, fp32_model: nn.Module, pruned: nn.Module, num_features: int, calibration: np.ndarray, work: Path
) -> dict[str, Path]:
    """FP32 ONNX of the original and of the pruned model, and the int8 model (`model.onnx`)."""
    paths = {
        "fp32": onnx_export.export_onnx(fp32_model, num_features, work / "fp32.onnx"),
        "pruned_fp32": onnx_export.export_onnx(pruned, num_features, work / "pruned_fp32.onnx"),
    }
    paths["int8"] = onnx_export.quantize(
        paths["pruned_fp32"],
        work / "model.onnx",
        mode=cfg.quantization,
        per_channel=cfg.per_channel,
        calibration_rows=calibration[: cfg.calibration_rows] if cfg.quantization == "static" else None,
    )
    return paths


def measure(
    cfg: ExportConfig, fp32_model: nn.Module, pruned: nn.Module, paths: dict[str, Path], data: Dataset
) -> tuple[dict, dict]:
    """Validation metrics (fp32 torch, pruned fp32 torch, int8 ONNX Runtime) and the latency table."""
    x, y = data.x[data.val_idx], data.y[data.val_idx]
    sessions = {
        "ort_fp32": onnx_export.session(paths["fp32"], cfg.latency_threads),
        "ort_int8": onnx_export.session(paths["int8"], cfg.latency_threads),
    }
    metrics = {
        "metric": "accuracy",
        "split": "validation",
        "rows": len(y),
        "fp32": {**evaluate.evaluate_torch(fp32_model, x, y), "runtime": "torch"},
        "pruned_fp32": {**evaluate.evaluate_torch(pruned, x, y), "runtime": "torch"},
        "exported": {
            **evaluate.evaluate_onnx(sessions["ort_int8"], x, y),
            "runtime": "onnxruntime",
            "precision": "int8",
        },
        "tolerance_points": cfg.tolerance,
    }
    latency = evaluate.latency_table(fp32_model, sessions, x, threads=cfg.latency_threads, iters=cfg.latency_iters)
    latency = {"threads": cfg.latency_threads, "iters": cfg.latency_iters, **latency}
    b64 = latency["batch_64"]
    _stage(
        5,
        "validation (%d rows): fp32 accuracy %.2f%% loss %.4f | pruned fp32 %.2f%% | int8 %.2f%% loss %.4f; "
        "batch-64 latency ms: torch %.3f, ort fp32 %.3f, ort int8 %.3f",
        len(y),
        metrics["fp32"]["accuracy"],
        metrics["fp32"]["loss"],
        metrics["pruned_fp32"]["accuracy"],
        metrics["exported"]["accuracy"],
        metrics["exported"]["loss"],
        b64["torch_fp32_eager"],
        b64["ort_fp32"],
        b64["ort_int8"],
    )
    return metrics, latency


@dataclass
class ExportResult:
    """What `run_export` produced."""

    out_dir: Path
    """The staged version directory (`model.onnx` + `manifest.json`)."""
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


def _artifact_info(
    ckpt: Consolidated, model_name: str, consolidated_path: Path, io: tuple[list, list], **measured: Any
) -> dict[str, Any]:
    """The manifest content of the artifact: io spec, measurements, provenance, versions."""
    inputs, outputs = io
    return {
        "model_name": model_name,
        "inputs": inputs,
        "outputs": outputs,
        **measured,
        "provenance": {
            "checkpoint_tag": ckpt.tag,
            "checkpoint_step": ckpt.manifest.get("step"),
            "checkpoint_manifest_sha256": ckpt.manifest_sha256,
            "config_digest": ckpt.manifest.get("config_digest"),  # the config as trained
            "preset": ckpt.config.preset,
            "zero_stage": ckpt.manifest.get("zero_stage"),
            "world_size": ckpt.manifest.get("world_size"),
            "data_source": ckpt.config.data.source,
            "consolidated_sha256": sha256_file(consolidated_path)[0],
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "versions": versions(),
    }


def _sizes(paths: dict[str, Path], consolidated_path: Path, quantization: str) -> dict[str, Any]:
    sizes: dict[str, Any] = {f"{name}_onnx": path.stat().st_size for name, path in paths.items()}
    sizes["fp32_safetensors"] = consolidated_path.stat().st_size
    sizes["int8_vs_fp32_onnx"] = round(sizes["int8_onnx"] / sizes["fp32_onnx"], 4)
    _stage(
        4,
        "ONNX fp32 %d bytes -> pruned %d -> int8 (%s) %d bytes (%.3fx)",
        sizes["fp32_onnx"],
        sizes["pruned_fp32_onnx"],
        quantization,
        sizes["int8_onnx"],
        sizes["int8_vs_fp32_onnx"],
    )
    return sizes


def _export_mlp(cfg: ExportConfig, ckpt: Consolidated, consolidated_path: Path, work: Path) -> tuple:
    """Stages 2-6 for an MLP: (int8 model path, manifest measurements, io spec)."""
    fp32_model = ckpt.build_model()
    _stage(
        2,
        "consolidated ZeRO-%s (%s ranks, step %s): %d fp32 parameters -> %s",
        ckpt.manifest.get("zero_stage"),
        ckpt.manifest.get("world_size"),
        ckpt.manifest.get("step"),
        count_parameters(fp32_model),
        consolidated_path,
    )
    data = _load_data(ckpt)
    pruned, compression = compress(cfg, ckpt, fp32_model, standardized(data, ckpt.stats))
    compression["preprocessing"] = _preprocessing(ckpt.stats)
    # From here on every model takes raw rows: the statistics are part of the exported graph.
    fp32_model, pruned = raw_input_model(fp32_model, ckpt.stats), raw_input_model(pruned, ckpt.stats)
    paths = build_onnx(cfg, fp32_model, pruned, ckpt.num_features, data.x[data.train_idx], work)
    sizes = _sizes(paths, consolidated_path, cfg.quantization)
    metrics, latency = measure(cfg, fp32_model, pruned, paths, data)
    drop = evaluate.gate(metrics["fp32"]["accuracy"], metrics["exported"]["accuracy"], cfg.tolerance)
    metrics["accuracy_drop_points"] = round(drop, 4)
    _stage(6, "gate passed (drop %.2f <= %g points)", drop, cfg.tolerance)
    measured = {"compression": compression, "metrics": metrics, "latency_ms": latency, "size_bytes": sizes}
    return paths["int8"], measured, onnx_export.io_spec(ckpt.num_features)


def run_export(cfg: ExportConfig) -> ExportResult:
    """Run all stages (see the module docstring; language models: `runtime.export.lm`).

    Raises:
        NoCheckpointError: no checkpoint verifies (nothing staged).
        ExportError: bad checkpoint tag, data, model name or output directory (nothing staged).
        GateError: the accuracy drop exceeds `cfg.tolerance`, or the perplexity increase
            `cfg.perplexity_tolerance` (nothing staged or published).
        ArtifactError, PublishError: staging or publishing failed (runtime.repository).
    """
    out_dir = cfg.resolved_out_dir
    check_out_dir(out_dir)  # fail before minutes of work; checked again when staging
    ckpt = consolidate.load(cfg.checkpoints_dir, cfg.checkpoint)
    _stage(1, "checkpoint %s verifies against its manifest", ckpt.tag_dir)
    model_name = _model_name(cfg, ckpt)
    consolidated_path = consolidate.save_consolidated(ckpt, cfg.resolved_consolidated_dir)
    with tempfile.TemporaryDirectory(prefix="stratus-export-") as tmp:
        export = lm.export_lm if ckpt.config.model.kind == "gpt" else _export_mlp
        model_path, measured, io = export(cfg, ckpt, consolidated_path, Path(tmp))
        info = _artifact_info(ckpt, model_name, consolidated_path, io, **measured)
        manifest = stage_artifact(out_dir, model_path, info)
    log.info("      staged %s", out_dir)
    version = None
    if cfg.publish:
        from runtime.repository.publish import publish

        version = publish(out_dir, cfg.publish, model_name=model_name, kms_key_id=cfg.kms_key_id)
    return ExportResult(out_dir=out_dir, manifest=manifest, version=version)
