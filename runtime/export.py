"""`python -m runtime export`: checkpoint -> fp32 -> pruned -> int8 ONNX -> evaluated -> gated artifact.

    # newest verified checkpoint of a run, default compression, staged into runs/mlp-binary/export
    python -m runtime export --run-dir runs/mlp-binary
    # a given tag, stronger pruning, static quantization, then publish into a local repository
    python -m runtime export --run-dir runs/mlp-binary --checkpoint global_step3000 \\
        --structured-fraction 0.75 --sparsity 0.8 --quantization static --publish runs/model-repo

Stages (one progress line each):
  1. verify the checkpoint's manifest (nothing is unpickled before it verifies);
  2. consolidate the ZeRO shards to fp32 with DeepSpeed's zero_to_fp32 and save
     `<run>/consolidated/<tag>.safetensors` (written even if the gate later fails: it is the
     checkpoint in portable form, not the artifact);
  3. prune: structured (whole hidden units), then unstructured magnitude, then fine-tune;
  4. export FP32 ONNX (dynamic batch) and quantize to int8 with ONNX Runtime;
  5. evaluate fp32 (PyTorch) and int8 (ONNX Runtime) on the validation split; measure latency;
  6. gate on the accuracy drop, then stage `model.onnx` + `manifest.json` into the output
     directory (atomically replacing a previous export) and, with `--publish`, publish it.

If the gate fails, the output directory is left as it was and nothing is published.
Exit codes: 0 exported, 1 bad input or failed publish (the message says what to change),
2 usage error, 3 gate failed (accuracy dropped more than --tolerance).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from runtime import export_eval, onnx_export, prune
from runtime.artifact import ArtifactError, sha256_file
from runtime.consolidate import Consolidated, consolidate, resolve_checkpoint, save_consolidated
from runtime.data import DataError, Dataset, load_dataset
from runtime.export_config import ExportConfig, ExportError, GateError
from runtime.export_eval import gate
from runtime.export_stage import check_out_dir, stage_artifact, versions
from runtime.log import get_logger
from runtime.models import count_parameters

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
        "fp32": {**export_eval.evaluate_torch(fp32_model, x, y), "runtime": "torch"},
        "pruned_fp32": {**export_eval.evaluate_torch(pruned, x, y), "runtime": "torch"},
        "exported": {
            **export_eval.evaluate_onnx(sessions["ort_int8"], x, y),
            "runtime": "onnxruntime",
            "precision": "int8",
        },
        "tolerance_points": cfg.tolerance,
    }
    latency = export_eval.latency_table(fp32_model, sessions, x, threads=cfg.latency_threads, iters=cfg.latency_iters)
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


def run_export(cfg: ExportConfig) -> dict[str, Any]:
    """Run all stages (see the module docstring); return `{"out_dir", "manifest", "version"}`.

    Raises:
        ExportError: bad checkpoint, data, or output directory (nothing staged).
        GateError: the accuracy drop exceeds `cfg.tolerance` (nothing staged or published).
        ArtifactError, PublishError: staging or publishing failed (from runtime.artifact/publish).
    """
    out_dir = cfg.resolved_out_dir
    check_out_dir(out_dir)  # fail before minutes of work; checked again when staging
    tag_dir = resolve_checkpoint(cfg.checkpoints_dir, cfg.checkpoint)
    _stage(1, "checkpoint %s verifies against its manifest", tag_dir)
    ckpt = consolidate(tag_dir)
    model_name = cfg.model_name or ckpt.config.preset
    if cfg.publish:
        from runtime.publish import check_model_name

        check_model_name(model_name)
    consolidated_path = save_consolidated(ckpt, cfg.resolved_consolidated_dir)
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
    pruned, compression = compress(cfg, ckpt, fp32_model, data)

    with tempfile.TemporaryDirectory(prefix="stratus-export-") as tmp:
        paths = build_onnx(cfg, fp32_model, pruned, ckpt.num_features, data.x[data.train_idx], Path(tmp))
        sizes = {f"{name}_onnx": path.stat().st_size for name, path in paths.items()}
        sizes["fp32_safetensors"] = consolidated_path.stat().st_size
        sizes["int8_vs_fp32_onnx"] = round(sizes["int8_onnx"] / sizes["fp32_onnx"], 4)
        _stage(
            4,
            "ONNX fp32 %d bytes -> pruned %d -> int8 (%s) %d bytes (%.3fx)",
            sizes["fp32_onnx"],
            sizes["pruned_fp32_onnx"],
            cfg.quantization,
            sizes["int8_onnx"],
            sizes["int8_vs_fp32_onnx"],
        )
        metrics, latency = measure(cfg, fp32_model, pruned, paths, data)
        drop = gate(metrics["fp32"]["accuracy"], metrics["exported"]["accuracy"], cfg.tolerance)
        metrics["accuracy_drop_points"] = round(drop, 4)
        inputs, outputs = onnx_export.io_spec(ckpt.num_features)
        info = {
            "model_name": model_name,
            "inputs": inputs,
            "outputs": outputs,
            "compression": compression,
            "metrics": metrics,
            "latency_ms": latency,
            "size_bytes": sizes,
            "provenance": {
                "checkpoint_tag": ckpt.tag,
                "checkpoint_step": ckpt.manifest.get("step"),
                "checkpoint_manifest_sha256": ckpt.manifest_sha256,
                "config_digest": ckpt.config.digest(),
                "preset": ckpt.config.preset,
                "zero_stage": ckpt.manifest.get("zero_stage"),
                "world_size": ckpt.manifest.get("world_size"),
                "data_source": ckpt.config.data.source,
                "consolidated_sha256": sha256_file(consolidated_path)[0],
                "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            "versions": versions(),
        }
        manifest = stage_artifact(out_dir, paths["int8"], info)
    _stage(6, "gate passed (drop %.2f <= %g points); staged %s", drop, cfg.tolerance, out_dir)

    version = None
    if cfg.publish:
        from runtime.publish import publish

        version = publish(out_dir, cfg.publish, model_name=model_name, kms_key_id=cfg.kms_key_id)
    return {"out_dir": out_dir, "manifest": manifest, "version": version}


def build_parser() -> argparse.ArgumentParser:
    d = ExportConfig(run_dir=Path("."))
    p = argparse.ArgumentParser(
        prog="python -m runtime export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--run-dir", metavar="DIR", required=True, type=Path, help="training run directory, e.g. runs/mlp-binary")
    a("--checkpoint", metavar="TAG", help="checkpoint tag (global_step<N>); default: newest verified")
    a("--out", metavar="DIR", type=Path, help="staged version directory; default: <run-dir>/export")
    a(
        "--consolidated-dir",
        metavar="DIR",
        type=Path,
        help="where <tag>.safetensors goes; default: <run-dir>/consolidated",
    )
    a("--model-name", metavar="NAME", help="name in the manifest and the repository; default: the training preset")
    a(
        "--structured-fraction",
        metavar="F",
        type=float,
        default=d.structured_fraction,
        help=f"fraction of each hidden layer's units removed (0 = off; default {d.structured_fraction})",
    )
    a(
        "--sparsity",
        metavar="F",
        type=float,
        default=d.sparsity,
        help=f"fraction of each Linear weight zeroed by magnitude, after structured pruning "
        f"(0 = off; default {d.sparsity})",
    )
    a(
        "--finetune-steps",
        metavar="N",
        type=int,
        default=d.finetune_steps,
        help=f"Adam steps on the training split after pruning (0 = off; default {d.finetune_steps})",
    )
    a("--finetune-lr", metavar="LR", type=float, help="fine-tune learning rate; default: the checkpoint's optim.lr")
    a(
        "--finetune-batch-size",
        metavar="N",
        type=int,
        help="fine-tune batch; default: the checkpoint's global_batch_size",
    )
    a(
        "--quantization",
        choices=("dynamic", "static"),
        default=d.quantization,
        help="int8 mode: dynamic (no data) or static (QDQ, calibrated on training rows); default dynamic",
    )
    a("--per-channel", action="store_true", help="one int8 weight scale per output unit")
    a(
        "--calibration-rows",
        metavar="N",
        type=int,
        default=d.calibration_rows,
        help=f"training rows for static calibration (default {d.calibration_rows})",
    )
    a(
        "--tolerance",
        metavar="POINTS",
        type=float,
        default=d.tolerance,
        help=f"largest allowed accuracy drop fp32 -> int8, in points (default {d.tolerance}); "
        "negative demands an improvement",
    )
    a(
        "--latency-threads",
        metavar="N",
        type=int,
        default=d.latency_threads,
        help=f"CPU threads when timing PyTorch and ONNX Runtime (default {d.latency_threads})",
    )
    a(
        "--latency-iters",
        metavar="N",
        type=int,
        default=d.latency_iters,
        help=f"timed calls per latency number, median reported (default {d.latency_iters})",
    )
    a(
        "--publish",
        metavar="REPO",
        help="after the gate passes, publish to this model repository (a directory or s3://bucket/prefix)",
    )
    a("--kms-key-id", metavar="KEY", help="KMS key id/ARN for SSE-KMS when publishing to s3://")
    return p


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    return ExportConfig(
        run_dir=args.run_dir,
        checkpoint=args.checkpoint,
        out_dir=args.out,
        consolidated_dir=args.consolidated_dir,
        model_name=args.model_name,
        structured_fraction=args.structured_fraction,
        sparsity=args.sparsity,
        finetune_steps=args.finetune_steps,
        finetune_lr=args.finetune_lr,
        finetune_batch_size=args.finetune_batch_size,
        quantization=args.quantization,
        per_channel=args.per_channel,
        calibration_rows=args.calibration_rows,
        tolerance=args.tolerance,
        latency_threads=args.latency_threads,
        latency_iters=args.latency_iters,
        publish=args.publish,
        kms_key_id=args.kms_key_id,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_export(config_from_args(args))
    except GateError as e:
        log.error("%s", e)
        return 3
    except (ExportError, ArtifactError) as e:
        log.error("export failed: %s", e)
        return 1
    except Exception as e:
        from runtime.repo import PublishError

        if isinstance(e, PublishError):
            log.error("publish failed (the staged export is kept): %s", e)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
