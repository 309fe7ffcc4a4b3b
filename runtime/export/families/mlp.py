"""Export half of the `mlp` family: structured + magnitude pruning with a fine-tune, ONNX with a
dynamic batch axis, int8 (dynamic or static), accuracy gate. Training half: `runtime.train.families.mlp`.

The feature statistics the model was trained with (`feature_stats.json` of the checkpoint) are
folded into the exported graph, so the served model takes raw rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from runtime.export import evaluate, onnx_export, prune
from runtime.export.config import ExportConfig, ExportError
from runtime.export.consolidate import Consolidated
from runtime.export.families.spec import Built, Compressed, Measured, refuse_flags
from runtime.train.data import DataError, Dataset, load_dataset
from runtime.train.models import count_parameters
from runtime.train.tabular import FeatureStats, RawFeatureModel


def standardized(data: Dataset, stats: FeatureStats | None) -> Dataset:
    """The data as the model was trained on it (standardised with the checkpoint's statistics)."""
    return dataclasses.replace(data, x=stats.apply(data.x)) if stats is not None else data


def raw_input_model(logits_model: nn.Module, stats: FeatureStats | None) -> nn.Module:
    """The model as it is exported and served: raw rows in, standardisation inside the graph."""
    return RawFeatureModel(logits_model, stats).eval() if stats is not None else logits_model


def preprocessing(stats: FeatureStats | None) -> dict[str, Any]:
    """The `compression.preprocessing` section of the manifest."""
    if stats is None:
        return {"standardize": False}
    return {
        "standardize": True,
        "where": "inside model.onnx: (input - mean) / scale before the first layer; send raw rows",
        "stats_from": "training split",
        "constant_columns": list(stats.constant_columns),
    }


def _load_data(ckpt: Consolidated, num_features: int) -> Dataset:
    cfg = ckpt.config
    try:
        data = load_dataset(cfg.data, cfg.seed)
    except DataError as e:
        raise ExportError(f"validation data of the checkpoint's config: {e}") from None
    if data.num_features != num_features:
        raise ExportError(
            f"data {data.source} has {data.num_features} features but checkpoint {ckpt.tag} was "
            f"trained on {num_features}; export with the data the run was trained on"
        )
    return data


def _layer_line(row: dict[str, Any]) -> str:
    return (
        f"layer {row['layer']}: {row['shape_before']} -> {row['shape_after']}, weight sparsity "
        f"{100 * row['weight_sparsity']:.1f}% ({100 * row['effective_sparsity']:.1f}% of the original layer)"
    )


class MlpExporter:
    """The `mlp` family's `runtime.export.families.spec.Exporter`."""

    def __init__(self, cfg: ExportConfig, ckpt: Consolidated):
        refuse_flags(cfg.hf_flags_set(), "mlp", "they select hf-causal-lm layer pruning and its model builder")
        self.cfg, self.ckpt = cfg, ckpt
        self.quantization = cfg.quantization
        self.num_features = int(ckpt.state_dict["0.weight"].shape[1])
        self.data = _load_data(ckpt, self.num_features)

    def compress(self) -> Compressed:
        """Structured pruning, magnitude pruning, fine-tune on the standardised training split."""
        cfg, train_cfg, fp32 = self.cfg, self.ckpt.config, self.ckpt.model
        pruned = prune.clone(fp32)
        if cfg.structured_fraction > 0:
            pruned, _ = prune.prune_structured(pruned, cfg.structured_fraction)
        prune.prune_magnitude(pruned, cfg.sparsity)
        lr = cfg.finetune_lr or train_cfg.optim.lr
        batch = cfg.finetune_batch_size or train_cfg.global_batch_size
        data = standardized(self.data, self.ckpt.stats)
        x, y = data.x[data.train_idx], data.y[data.train_idx]
        losses = prune.finetune(pruned, x, y, steps=cfg.finetune_steps, lr=lr, batch_size=batch, seed=train_cfg.seed)
        prune.make_permanent(pruned)
        report = {
            **cfg.compression_settings(),
            "finetune_lr": lr,
            "finetune_batch_size": batch,
            "finetune_last_loss": losses[-1] if losses else None,
            "params_fp32": count_parameters(fp32),
            "params_pruned": count_parameters(pruned),
            "nonzero_params_pruned": prune.nonzero_parameters(pruned),
            "layers": prune.sparsity_report(pruned, fp32),
            "preprocessing": preprocessing(self.ckpt.stats),
        }
        line = (
            f"pruned: {report['params_fp32']} -> {report['params_pruned']} parameters "
            f"({report['nonzero_params_pruned']} nonzero); fine-tune {len(losses)} steps"
            + (f", last loss {losses[-1]:.4f}" if losses else "")
        )
        # From here on every model takes raw rows: the statistics are part of the exported graph.
        stats = self.ckpt.stats
        return Compressed(
            fp32=raw_input_model(fp32, stats),
            pruned=raw_input_model(pruned, stats),
            report=report,
            line=line,
            details=[_layer_line(row) for row in report["layers"]],
        )

    def to_onnx(self, compressed: Compressed, work: Path) -> Built:
        cfg, n = self.cfg, self.num_features
        paths = {
            "fp32": onnx_export.export_onnx(compressed.fp32, n, work / "fp32.onnx"),
            "pruned_fp32": onnx_export.export_onnx(compressed.pruned, n, work / "pruned_fp32.onnx"),
        }
        calibration = self.data.x[self.data.train_idx]
        paths["int8"] = onnx_export.quantize(
            paths["pruned_fp32"],
            work / "model.onnx",
            mode=cfg.quantization,
            per_channel=cfg.per_channel,
            calibration_rows=calibration[: cfg.calibration_rows] if cfg.quantization == "static" else None,
        )
        return Built.onnx_files(paths, self.ckpt.path, self.quantization)

    def measure(self, compressed: Compressed, paths: dict[str, Path]) -> Measured:
        """Validation accuracy of fp32 torch, pruned fp32 torch, int8 ONNX Runtime; latency table."""
        cfg, data = self.cfg, self.data
        x, y = data.x[data.val_idx], data.y[data.val_idx]
        sessions = {
            "ort_fp32": onnx_export.session(paths["fp32"], cfg.latency_threads),
            "ort_int8": onnx_export.session(paths["int8"], cfg.latency_threads),
        }
        metrics = {
            "metric": "accuracy",
            "split": "validation",
            "rows": len(y),
            "fp32": {**evaluate.evaluate_torch(compressed.fp32, x, y), "runtime": "torch"},
            "pruned_fp32": {**evaluate.evaluate_torch(compressed.pruned, x, y), "runtime": "torch"},
            "exported": {
                **evaluate.evaluate_onnx(sessions["ort_int8"], x, y),
                "runtime": "onnxruntime",
                "precision": "int8",
            },
            "tolerance_points": cfg.tolerance,
        }
        table = evaluate.latency_table(
            compressed.fp32, sessions, x, threads=cfg.latency_threads, iters=cfg.latency_iters
        )
        b64 = table["batch_64"]
        line = (
            f"validation ({len(y)} rows): fp32 accuracy {metrics['fp32']['accuracy']:.2f}% loss "
            f"{metrics['fp32']['loss']:.4f} | pruned fp32 {metrics['pruned_fp32']['accuracy']:.2f}% | int8 "
            f"{metrics['exported']['accuracy']:.2f}% loss {metrics['exported']['loss']:.4f}; batch-64 latency ms: "
            f"torch {b64['torch_fp32_eager']:.3f}, ort fp32 {b64['ort_fp32']:.3f}, ort int8 {b64['ort_int8']:.3f}"
        )
        latency = {"threads": cfg.latency_threads, "iters": cfg.latency_iters, **table}
        return Measured(metrics=metrics, latency=latency, line=line)

    def gate(self, measured: Measured) -> str:
        metrics, tolerance = measured.metrics, self.cfg.tolerance
        drop = evaluate.gate(metrics["fp32"]["accuracy"], metrics["exported"]["accuracy"], tolerance)
        metrics["accuracy_drop_points"] = round(drop, 4)
        return f"gate passed (drop {drop:.2f} <= {tolerance:g} points)"

    def io_spec(self) -> tuple[list[dict], list[dict]]:
        return onnx_export.io_spec(self.num_features)

    def manifest_sections(self) -> dict[str, Any]:
        return {}
