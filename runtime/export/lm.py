"""Language-model export primitives: FFN pruning, ONNX with dynamic axes, perplexity, latency, gate.

What the `gpt` family's exporter (`runtime.export.families.gpt`) does in the pipeline's stages 3-6:
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

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from runtime.common.tokens import EOT, VOCAB_SIZE
from runtime.export import onnx_export
from runtime.export.config import GateError
from runtime.train.gpt import GPT, FeedForward

INPUT_IDS = "input_ids"
LOGITS = "logits"
LM_QUANTIZED_OPS = ["MatMul", "Gemm", "Gather"]
LATENCY_BATCHES = (1, 8)
LATENCY_WARMUP = 2


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


def perplexity(logits_of, windows: np.ndarray, batch: int = 8) -> float:
    """exp(mean next-token cross-entropy) over packed windows [n, seq_len + 1] of any language
    model: `logits_of(ids)` maps int64 inputs [b, seq_len] to logits [b, seq_len, vocab] (a torch
    tensor or a numpy array)."""
    total = count = 0.0
    with torch.inference_mode():
        for w in _batches(windows, batch):
            logits = torch.as_tensor(logits_of(w[:, :-1])).float()
            targets = torch.from_numpy(w[:, 1:])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
            count += targets.numel()
    return math.exp(total / count)


def perplexity_torch(model: GPT, windows: np.ndarray, batch: int = 8) -> float:
    """exp(mean next-token cross-entropy) of `model` over packed windows [n, seq_len + 1]."""
    return perplexity(lambda ids: model(torch.from_numpy(ids)), windows, batch)


def onnx_logits(sess: ort.InferenceSession, ids: np.ndarray) -> np.ndarray:
    return sess.run([LOGITS], {INPUT_IDS: np.ascontiguousarray(ids, dtype=np.int64)})[0]


def perplexity_onnx(sess: ort.InferenceSession, windows: np.ndarray, batch: int = 8) -> float:
    return perplexity(lambda ids: onnx_logits(sess, ids), windows, batch)


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
