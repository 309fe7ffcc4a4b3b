"""Export of language models (model.kind=gpt): FFN pruning, ONNX with dynamic axes, int8, perplexity gate.

The pipeline's stages 3-6 for a GPT checkpoint (`runtime.export.pipeline.run_export` hands over
after consolidation):
  3. optional structured pruning of feed-forward hidden units (`--ffn-prune-fraction`): in every
     block, the hidden units with the lowest |fc row| x |proj column| are cut from both matrices;
  4. FP32 ONNX of the original and the pruned model, input `input_ids` INT64 [batch, seq], output
     `logits` FP32 [batch, seq, 257], batch and sequence axes dynamic (seq up to the trained
     context), then int8 with ONNX Runtime's `quantize_dynamic` (MatMul weights and the embedding
     tables: Gather);
  5. validation perplexity (the checkpoint's validation split, its first `data.val_max_sequences`
     windows) of fp32 PyTorch, pruned fp32 PyTorch and int8 ONNX Runtime, int8 vs fp32 logit
     agreement, and latency at batch 1 and 8 for full-context sequences;
  6. the gate: int8 perplexity at most `--perplexity-tolerance` percent above fp32, then staging
     and publishing as for every model.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from runtime.common.log import get_logger
from runtime.common.tokens import EOT, VOCAB_SIZE
from runtime.export import onnx_export
from runtime.export.config import ExportConfig, ExportError, GateError
from runtime.export.consolidate import Consolidated
from runtime.train.data import DataError, Dataset
from runtime.train.gpt import GPT, FeedForward
from runtime.train.models import count_parameters
from runtime.train.text import load_text_dataset

log = get_logger()
INPUT_IDS = "input_ids"
LOGITS = "logits"
LM_QUANTIZED_OPS = ["MatMul", "Gemm", "Gather"]
LATENCY_BATCHES = (1, 8)
LATENCY_WARMUP = 2
DEFAULT_EVAL_SEQUENCES = 64


def io_spec(seq_len: int) -> tuple[list[dict], list[dict]]:
    """Input and output tensor specs as the artifact manifest records them (sequence axis dynamic)."""
    inputs = [{"name": INPUT_IDS, "datatype": "INT64", "shape": [-1, -1]}]
    outputs = [{"name": LOGITS, "datatype": "FP32", "shape": [-1, -1, VOCAB_SIZE]}]
    return inputs, outputs


def prune_ffn(model: GPT, fraction: float) -> GPT:
    """A copy of `model` with `fraction` of every block's feed-forward hidden units removed."""
    pruned = copy.deepcopy(model).eval()
    if fraction <= 0:
        return pruned
    for block in pruned.blocks:
        ffn: FeedForward = block.ffn
        hidden = ffn.fc.out_features
        keep_count = max(1, hidden - int(round(fraction * hidden)))
        score = ffn.fc.weight.norm(dim=1) * ffn.proj.weight.norm(dim=0)
        keep = torch.sort(torch.topk(score, keep_count).indices).values
        fc = torch.nn.Linear(ffn.fc.in_features, keep_count)
        proj = torch.nn.Linear(keep_count, ffn.proj.out_features)
        with torch.no_grad():
            fc.weight.copy_(ffn.fc.weight[keep])
            fc.bias.copy_(ffn.fc.bias[keep])
            proj.weight.copy_(ffn.proj.weight[:, keep])
            proj.bias.copy_(ffn.proj.bias)
        ffn.fc, ffn.proj = fc, proj
    return pruned


def export_lm_onnx(model: GPT, seq_len: int, path: Path) -> Path:
    """FP32 ONNX of `model` with dynamic batch and sequence (1..seq_len) axes; checked before return."""
    sample = torch.zeros(2, min(16, seq_len) if seq_len > 2 else seq_len, dtype=torch.int64)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=seq_len)}
    with onnx_export.quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model.eval(),
            (sample,),
            input_names=[INPUT_IDS],
            output_names=[LOGITS],
            dynamic_shapes=(dims,),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    del proto.graph.value_info[:]  # stale once the quantizer rewrites weights; ONNX Runtime re-infers
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return Path(path)


def _batches(windows: np.ndarray, batch: int):
    for i in range(0, len(windows), batch):
        yield windows[i : i + batch]


def perplexity_torch(model: GPT, windows: np.ndarray, batch: int = 8) -> float:
    """exp(mean next-token cross-entropy) of `model` over packed windows [n, seq_len + 1]."""
    total = count = 0.0
    with torch.inference_mode():
        for w in _batches(windows, batch):
            ids = torch.from_numpy(w)
            logits = model(ids[:, :-1])
            total += F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), ids[:, 1:].reshape(-1), reduction="sum").item()
            count += ids[:, 1:].numel()
    return math.exp(total / count)


def onnx_logits(sess: ort.InferenceSession, ids: np.ndarray) -> np.ndarray:
    return sess.run([LOGITS], {INPUT_IDS: np.ascontiguousarray(ids, dtype=np.int64)})[0]


def perplexity_onnx(sess: ort.InferenceSession, windows: np.ndarray, batch: int = 8) -> float:
    total = count = 0.0
    for w in _batches(windows, batch):
        logits = torch.from_numpy(onnx_logits(sess, w[:, :-1]))
        targets = torch.from_numpy(w[:, 1:])
        total += F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
    return math.exp(total / count)


def logit_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """How closely `other` logits follow `reference`: mean and max |difference| relative to the
    reference's standard deviation, and the share of positions with the same most likely token."""
    diff = np.abs(other.astype(np.float64) - reference)
    scale = float(reference.std()) or 1.0
    return {
        "mean_abs_diff_rel": float(diff.mean() / scale),
        "max_abs_diff_rel": float(diff.max() / scale),
        "top1_agreement": float(np.mean(other.argmax(-1) == reference.argmax(-1))),
    }


def _median_ms(fn, iters: int) -> float:
    for _ in range(LATENCY_WARMUP):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e3, 3)


def latency(model: GPT, sessions: dict[str, ort.InferenceSession], seq_len: int, *, threads: int, iters: int) -> dict:
    """Median ms of one full-context forward at each of `LATENCY_BATCHES` (torch eager and each session)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    table: dict[str, dict[str, float]] = {}
    try:
        for b in LATENCY_BATCHES:
            ids = np.random.default_rng(b).integers(0, EOT, (b, seq_len), dtype=np.int64)
            with torch.inference_mode():
                entry = {"torch_fp32_eager": _median_ms(lambda ids=ids: model(torch.from_numpy(ids)), iters)}
            for name, sess in sessions.items():
                entry[name] = _median_ms(lambda sess=sess, ids=ids: onnx_logits(sess, ids), iters)
            table[f"batch_{b}"] = entry
    finally:
        torch.set_num_threads(previous)
    return table


def gate(fp32_ppl: float, exported_ppl: float, tolerance_pct: float) -> float:
    """The perplexity increase in percent; GateError when it exceeds `tolerance_pct`."""
    increase = 100.0 * (exported_ppl - fp32_ppl) / fp32_ppl
    if increase > tolerance_pct:
        raise GateError(
            f"gate failed: validation perplexity fp32 {fp32_ppl:.3f} -> int8 {exported_ppl:.3f} "
            f"(+{increase:.2f}% > tolerance {tolerance_pct:g}%); nothing was written or published. "
            "Prune fewer FFN units (--ffn-prune-fraction), try --per-channel, or raise --perplexity-tolerance"
        )
    return increase


def _validation_windows(ckpt: Consolidated) -> np.ndarray:
    cfg = ckpt.config
    try:
        data: Dataset = load_text_dataset(cfg.data, cfg.model.seq_len, cfg.seed)
    except DataError as e:
        raise ExportError(f"validation text of the checkpoint's config: {e}") from None
    cap = cfg.data.val_max_sequences or DEFAULT_EVAL_SEQUENCES
    return data.x[data.val_idx[:cap]]


def _sizes(paths: dict[str, Path], consolidated_path: Path) -> dict[str, Any]:
    sizes: dict[str, Any] = {f"{name}_onnx": path.stat().st_size for name, path in paths.items()}
    sizes["fp32_safetensors"] = consolidated_path.stat().st_size
    sizes["int8_vs_fp32_onnx"] = round(sizes["int8_onnx"] / sizes["fp32_onnx"], 4)
    log.info(
        "[4/6] ONNX fp32 %d bytes -> pruned %d -> int8 (dynamic, MatMul + embeddings) %d bytes (%.3fx)",
        sizes["fp32_onnx"],
        sizes["pruned_fp32_onnx"],
        sizes["int8_onnx"],
        sizes["int8_vs_fp32_onnx"],
    )
    return sizes


def measure_lm(cfg: ExportConfig, fp32: GPT, pruned: GPT, paths: dict[str, Path], windows: np.ndarray) -> tuple:
    """(metrics, latency): validation perplexities, int8 vs fp32 logit agreement, latency table."""
    sessions = {
        name: onnx_export.session(paths[key], cfg.latency_threads)
        for name, key in (("ort_fp32", "fp32"), ("ort_int8", "int8"))
    }
    probe = windows[: min(8, len(windows)), :-1]
    with torch.inference_mode():
        reference = fp32(torch.from_numpy(probe)).numpy()
    metrics = {
        "metric": "perplexity",
        "split": "validation",
        "sequences": len(windows),
        "tokens": int(windows[:, 1:].size),
        "fp32": {"perplexity": perplexity_torch(fp32, windows), "runtime": "torch"},
        "exported": {
            "perplexity": perplexity_onnx(sessions["ort_int8"], windows),
            "runtime": "onnxruntime",
            "precision": "int8",
        },
        "int8_vs_fp32_logits": logit_agreement(reference, onnx_logits(sessions["ort_int8"], probe)),
        "tolerance_percent": cfg.perplexity_tolerance,
    }
    # Unpruned, the pruned model is the fp32 one: not scored twice.
    pruned_ppl = perplexity_torch(pruned, windows) if pruned is not fp32 else metrics["fp32"]["perplexity"]
    metrics["pruned_fp32"] = {"perplexity": pruned_ppl, "runtime": "torch"}
    seq_len = windows.shape[1] - 1
    iters = min(cfg.latency_iters, 10)  # a full-context forward of a GPT is slow on a CPU
    table = latency(fp32, sessions, seq_len, threads=cfg.latency_threads, iters=iters)
    log.info(
        "[5/6] validation perplexity (%d sequences): fp32 %.3f | pruned fp32 %.3f | int8 %.3f; top-1 agreement "
        "int8 vs fp32 %.1f%%; batch-8 latency ms: torch %.1f, ort fp32 %.1f, ort int8 %.1f",
        len(windows),
        metrics["fp32"]["perplexity"],
        metrics["pruned_fp32"]["perplexity"],
        metrics["exported"]["perplexity"],
        100 * metrics["int8_vs_fp32_logits"]["top1_agreement"],
        table["batch_8"]["torch_fp32_eager"],
        table["batch_8"]["ort_fp32"],
        table["batch_8"]["ort_int8"],
    )
    return metrics, {"threads": cfg.latency_threads, "iters": iters, "seq_len": seq_len, **table}


def export_lm(cfg: ExportConfig, ckpt: Consolidated, consolidated_path: Path, work: Path) -> tuple:
    """Stages 2-6 for a GPT checkpoint: (int8 model path, manifest measurements, io spec).

    Raises:
        ExportError: static quantization asked for, or the validation text cannot be read.
        GateError: the int8 perplexity exceeds fp32's by more than `cfg.perplexity_tolerance` percent.
    """
    if cfg.quantization != "dynamic":
        raise ExportError("--quantization static is for mlp models; language models are quantized dynamically")
    model_cfg = ckpt.config.model
    fp32 = ckpt.build_model()
    log.info(
        "[2/6] consolidated ZeRO-%s (%s ranks, step %s): GPT with %d fp32 parameters -> %s",
        ckpt.manifest.get("zero_stage"),
        ckpt.manifest.get("world_size"),
        ckpt.manifest.get("step"),
        count_parameters(fp32),
        consolidated_path,
    )
    windows = _validation_windows(ckpt)
    pruned = prune_ffn(fp32, cfg.ffn_prune_fraction)
    log.info(
        "[3/6] FFN pruning %.0f%%: %d -> %d parameters",
        100 * cfg.ffn_prune_fraction,
        count_parameters(fp32),
        count_parameters(pruned),
    )
    paths = {"fp32": export_lm_onnx(fp32, model_cfg.seq_len, work / "fp32.onnx")}
    paths["pruned_fp32"] = paths["fp32"]
    if cfg.ffn_prune_fraction:
        paths["pruned_fp32"] = export_lm_onnx(pruned, model_cfg.seq_len, work / "pruned_fp32.onnx")
    paths["int8"] = onnx_export.quantize(
        paths["pruned_fp32"],
        work / "model.onnx",
        mode="dynamic",
        per_channel=cfg.per_channel,
        op_types=LM_QUANTIZED_OPS,
    )
    sizes = _sizes(paths, consolidated_path)
    metrics, latency_ms = measure_lm(cfg, fp32, pruned if cfg.ffn_prune_fraction else fp32, paths, windows)
    increase = gate(metrics["fp32"]["perplexity"], metrics["exported"]["perplexity"], cfg.perplexity_tolerance)
    metrics["perplexity_increase_percent"] = round(increase, 4)
    log.info("[6/6] gate passed (perplexity %+.2f%% <= %g%%)", increase, cfg.perplexity_tolerance)
    compression = {
        "ffn_prune_fraction": cfg.ffn_prune_fraction,
        "ffn_hidden_after": [b.ffn.fc.out_features for b in pruned.blocks],
        "params_fp32": count_parameters(fp32),
        "params_pruned": count_parameters(pruned),
        "quantization": {
            "mode": "dynamic",
            "weight_type": "int8",
            "per_channel": cfg.per_channel,
            "ops": LM_QUANTIZED_OPS,
            "tool": "onnxruntime.quantization",
        },
    }
    language_model = {"tokenizer": "bytes", "vocab_size": VOCAB_SIZE, "eot_id": EOT, "max_seq_len": model_cfg.seq_len}
    measured = {
        "compression": compression,
        "metrics": metrics,
        "latency_ms": latency_ms,
        "size_bytes": sizes,
        "language_model": language_model,
    }
    return paths["int8"], measured, io_spec(model_cfg.seq_len)
