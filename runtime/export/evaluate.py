"""Validation metrics and CPU latency for the export gate and the artifact manifest.

Both models are scored the same way, from probabilities: accuracy (threshold 0.5, in percent) and
binary cross-entropy with probabilities clipped to [1e-7, 1 - 1e-7] (an int8 model can saturate to
exactly 0 or 1, which would make an unclipped loss infinite).

Latency is the median wall time of one call (after warm-up) at a fixed batch, single process,
with the given number of intra-op threads for PyTorch and ONNX Runtime alike. It is measured, never
asserted: tests must not depend on a shared machine's timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from runtime.export.config import GateError
from runtime.export.onnx_export import INPUT_NAME, OUTPUT_NAME, predict
from runtime.train.models import WithSigmoid

EPS = 1e-7
WARMUP_CALLS = 20


def binary_metrics(prob: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """`{"accuracy": percent, "loss": mean BCE}` of probabilities `prob` [n] against 0/1 labels `y`."""
    prob = np.asarray(prob, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if prob.shape != y.shape or prob.size == 0:
        raise ValueError(f"need one probability per label, got {prob.shape} and {y.shape}")
    clipped = np.clip(prob, EPS, 1.0 - EPS)
    loss = -np.mean(y * np.log(clipped) + (1.0 - y) * np.log(1.0 - clipped))
    accuracy = 100.0 * float(np.mean((prob >= 0.5) == (y > 0.5)))
    return {"accuracy": accuracy, "loss": float(loss)}


def torch_probabilities(logits_model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """sigmoid(logits) [n] of an fp32 PyTorch model on rows `x`."""
    logits_model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append(torch.sigmoid(logits_model(torch.from_numpy(x[i : i + batch_size]))).reshape(-1))
    return torch.cat(out).numpy()


def evaluate_torch(logits_model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return binary_metrics(torch_probabilities(logits_model, x), y)


def evaluate_onnx(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return binary_metrics(predict(sess, x), y)


def median_ms(fn: Callable[[], object], iters: int) -> float:
    """Median milliseconds of `fn()` over `iters` timed calls, after `WARMUP_CALLS` untimed ones."""
    for _ in range(WARMUP_CALLS):
        fn()
    times = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1e3)


def torch_latency_ms(logits_model: nn.Module, batch: np.ndarray, *, threads: int, iters: int) -> float:
    """Median latency of PyTorch eager fp32 (logits + sigmoid) on `batch`, with `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = WithSigmoid(logits_model.eval()).eval()
    xt = torch.from_numpy(np.ascontiguousarray(batch))
    try:
        with torch.inference_mode():
            return median_ms(lambda: model(xt), iters)
    finally:
        torch.set_num_threads(previous)


def onnx_latency_ms(sess: ort.InferenceSession, batch: np.ndarray, *, iters: int) -> float:
    """Median latency of one `sess.run` on `batch` (threads are the session's setting)."""
    feed = {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}
    return median_ms(lambda: sess.run([OUTPUT_NAME], feed), iters)


def latency_table(
    torch_model: nn.Module,
    sessions: dict[str, ort.InferenceSession],
    rows: np.ndarray,
    *,
    batch_sizes: tuple[int, ...] = (1, 64),
    threads: int,
    iters: int,
) -> dict[str, dict[str, float]]:
    """`{"batch_<b>": {"torch_fp32_eager": ms, "<session name>": ms, ...}}` on the first rows.

    Rows are repeated when fewer than the batch size exist.
    """
    table: dict[str, dict[str, float]] = {}
    for b in batch_sizes:
        batch = np.resize(rows, (b, rows.shape[1])).astype(np.float32)
        entry = {"torch_fp32_eager": torch_latency_ms(torch_model, batch, threads=threads, iters=iters)}
        for name, sess in sessions.items():
            entry[name] = onnx_latency_ms(sess, batch, iters=iters)
        table[f"batch_{b}"] = {k: round(v, 4) for k, v in entry.items()}
    return table


def gate(fp32_accuracy: float, exported_accuracy: float, tolerance: float) -> float:
    """Return the accuracy drop in points; raise GateError when it exceeds `tolerance`."""
    drop = fp32_accuracy - exported_accuracy
    if drop > tolerance:
        raise GateError(
            f"gate failed: validation accuracy fp32 {fp32_accuracy:.2f}% -> int8 "
            f"{exported_accuracy:.2f}% (drop {drop:.2f} points > tolerance {tolerance:g}); "
            "nothing was written or published. Prune less (--structured-fraction, --sparsity), "
            "fine-tune longer (--finetune-steps), try --per-channel, or raise --tolerance"
        )
    return drop
