"""Export half of the `gpt` family: FFN pruning, ONNX with dynamic batch and sequence axes, dynamic
int8, perplexity gate (the primitives: `runtime.export.lm`). Training half: `runtime.train.families.gpt`.

Language models are quantized dynamically only (MatMul weights and the embedding tables); the
manifest gets a `language_model` section (tokenizer, vocabulary, context) that the `generate`
serving extension reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.common.tokens import EOT, VOCAB_SIZE
from runtime.export import lm, onnx_export
from runtime.export.config import ExportConfig, ExportError
from runtime.export.consolidate import Consolidated
from runtime.export.families.spec import Built, Compressed, Measured, refuse_flags
from runtime.train.data import DataError
from runtime.train.models import count_parameters
from runtime.train.text import load_text_dataset

DEFAULT_EVAL_SEQUENCES = 64
LATENCY_MAX_ITERS = 10  # a full-context forward of a GPT is slow on a CPU


def _validation_windows(ckpt: Consolidated) -> np.ndarray:
    cfg = ckpt.config
    try:
        data = load_text_dataset(cfg.data, cfg.model.seq_len, cfg.seed)
    except DataError as e:
        raise ExportError(f"validation text of the checkpoint's config: {e}") from None
    cap = cfg.data.val_max_sequences or DEFAULT_EVAL_SEQUENCES
    return data.x[data.val_idx[:cap]]


class LanguageModelExporter:
    """The `gpt` family's `runtime.export.families.spec.Exporter`."""

    quantization = "dynamic, MatMul + embeddings"

    def __init__(self, cfg: ExportConfig, ckpt: Consolidated):
        if cfg.quantization != "dynamic":
            raise ExportError("--quantization static is for mlp models; language models are quantized dynamically")
        refuse_flags(cfg.hf_flags_set(), "gpt", "they select hf-causal-lm layer pruning and its model builder")
        self.cfg, self.ckpt = cfg, ckpt
        self.seq_len = ckpt.config.model.seq_len
        self.windows = _validation_windows(ckpt)

    def compress(self) -> Compressed:
        fraction, fp32 = self.cfg.ffn_prune_fraction, self.ckpt.model
        pruned = lm.prune_ffn(fp32, fraction)
        report = {
            "ffn_prune_fraction": fraction,
            "ffn_hidden_after": [b.ffn.fc.out_features for b in pruned.blocks],
            "params_fp32": count_parameters(fp32),
            "params_pruned": count_parameters(pruned),
            "quantization": {
                "mode": "dynamic",
                "weight_type": "int8",
                "per_channel": self.cfg.per_channel,
                "ops": lm.LM_QUANTIZED_OPS,
                "tool": "onnxruntime.quantization",
            },
        }
        line = f"FFN pruning {100 * fraction:.0f}%: {report['params_fp32']} -> {report['params_pruned']} parameters"
        # Unpruned, the pruned model is the fp32 one: not exported or scored twice.
        return Compressed(fp32=fp32, pruned=pruned if fraction else fp32, report=report, line=line)

    def to_onnx(self, compressed: Compressed, work: Path) -> Built:
        paths = {"fp32": lm.export_lm_onnx(compressed.fp32, self.seq_len, work / "fp32.onnx")}
        paths["pruned_fp32"] = paths["fp32"]
        if compressed.pruned is not compressed.fp32:
            paths["pruned_fp32"] = lm.export_lm_onnx(compressed.pruned, self.seq_len, work / "pruned_fp32.onnx")
        paths["int8"] = onnx_export.quantize(
            paths["pruned_fp32"],
            work / "model.onnx",
            mode="dynamic",
            per_channel=self.cfg.per_channel,
            op_types=lm.LM_QUANTIZED_OPS,
        )
        return Built.onnx_files(paths, self.ckpt.path, self.quantization)

    def measure(self, compressed: Compressed, paths: dict[str, Path]) -> Measured:
        """Validation perplexities, int8 vs fp32 logit agreement, latency table."""
        cfg, windows, fp32 = self.cfg, self.windows, compressed.fp32
        sessions = {
            name: onnx_export.session(paths[key], cfg.latency_threads)
            for name, key in (("ort_fp32", "fp32"), ("ort_int8", "int8"))
        }
        probe = windows[: min(8, len(windows)), :-1]
        with torch.inference_mode():
            reference = fp32(torch.from_numpy(probe)).numpy()
        fp32_ppl = lm.perplexity_torch(fp32, windows)
        metrics = {
            "metric": "perplexity",
            "split": "validation",
            "sequences": len(windows),
            "tokens": int(windows[:, 1:].size),
            "fp32": {"perplexity": fp32_ppl, "runtime": "torch"},
            "exported": {
                "perplexity": lm.perplexity_onnx(sessions["ort_int8"], windows),
                "runtime": "onnxruntime",
                "precision": "int8",
            },
            "int8_vs_fp32_logits": lm.logit_agreement(reference, lm.onnx_logits(sessions["ort_int8"], probe)),
            "tolerance_percent": cfg.perplexity_tolerance,
        }
        pruned_ppl = lm.perplexity_torch(compressed.pruned, windows) if compressed.pruned is not fp32 else fp32_ppl
        metrics["pruned_fp32"] = {"perplexity": pruned_ppl, "runtime": "torch"}
        seq_len, iters = windows.shape[1] - 1, min(cfg.latency_iters, LATENCY_MAX_ITERS)
        table = lm.latency(fp32, sessions, seq_len, threads=cfg.latency_threads, iters=iters)
        b8 = table["batch_8"]
        line = (
            f"validation perplexity ({len(windows)} sequences): fp32 {fp32_ppl:.3f} | pruned fp32 {pruned_ppl:.3f} "
            f"| int8 {metrics['exported']['perplexity']:.3f}; top-1 agreement int8 vs fp32 "
            f"{100 * metrics['int8_vs_fp32_logits']['top1_agreement']:.1f}%; batch-8 latency ms: torch "
            f"{b8['torch_fp32_eager']:.1f}, ort fp32 {b8['ort_fp32']:.1f}, ort int8 {b8['ort_int8']:.1f}"
        )
        latency = {"threads": cfg.latency_threads, "iters": iters, "seq_len": seq_len, **table}
        return Measured(metrics=metrics, latency=latency, line=line)

    def gate(self, measured: Measured) -> str:
        metrics, tolerance = measured.metrics, self.cfg.perplexity_tolerance
        increase = lm.gate(metrics["fp32"]["perplexity"], metrics["exported"]["perplexity"], tolerance)
        metrics["perplexity_increase_percent"] = round(increase, 4)
        return f"gate passed (perplexity {increase:+.2f}% <= {tolerance:g}%)"

    def io_spec(self) -> tuple[list[dict], list[dict]]:
        return lm.io_spec(self.seq_len)

    def manifest_sections(self) -> dict[str, Any]:
        info = {"tokenizer": "bytes", "vocab_size": VOCAB_SIZE, "eot_id": EOT, "max_seq_len": self.seq_len}
        return {"language_model": info}
