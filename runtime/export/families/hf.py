"""Export half of the `hf-causal-lm` family: Hugging Face directory, layer pruning, onnxruntime-genai
build (int4/int8/fp32 with a key/value cache), perplexity gate on the served graph. Training half:
`runtime.train.families.hf`; primitives: `runtime.export.hf`.

What the pipeline's stages do for this family:
  3. the fine-tuned model (LoRA merged) is written as a Hugging Face directory,
     `<run>/hf-export/<tag>/` (safetensors + the checkpoint's tokenizer files: the portable form
     for any tool); with `--prune-layers N`, the N decoder layers whose output is most similar to
     their input on validation text are removed, then `--heal-steps` of AdamW on the training text;
  4. onnxruntime-genai's model builder turns the (pruned) directory into the served model at
     `--precision` for `--device` (and, with `--compare`, the other precisions beside it);
  5. validation perplexity of the fine-tuned torch model, the pruned torch model and the served
     ONNX graph on the same windows; time to first token and decode tokens/s with the generator;
  6. the gate: served perplexity at most `--perplexity-tolerance` percent above the torch model's.
The artifact is the built directory (`model.onnx`, `model.onnx.data`, `genai_config.json`,
tokenizer files); its manifest's `language_model.runtime` is `onnxruntime-genai`, which is how the
server recognises it (its `inputs`/`outputs` describe the logits model and are not checked against
the graph, whose key/value inputs the generator feeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.export.config import PRECISION_CHOICES, ExportConfig, ExportError, GateError
from runtime.export.consolidate import Consolidated
from runtime.export.families.spec import Built, Compressed, Measured
from runtime.export.hf import evaluate, layers
from runtime.export.hf.build import build_genai
from runtime.export.hf.hfdir import TextWindows, merged_model, save_hf_dir, weights_bytes
from runtime.train.data import DataError
from runtime.train.hf.data import load_jsonl_dataset
from runtime.train.hf.model import HF_DIR, load_tokenizer
from runtime.train.models import count_parameters

DEFAULT_EVAL_SEQUENCES = 64
"""Validation windows the gate scores when the run set no `data.val_max_sequences`."""

LATENCY_PROMPT_TOKENS = 32
LATENCY_NEW_TOKENS = 32
LATENCY_MAX_ITERS = 5
SERVED = "served"


def read_windows(ckpt: Consolidated, tokenizer, seq_len: int) -> TextWindows:
    """The checkpoint's training and validation windows, packed and split as training split them
    (`load_jsonl_dataset` with the run's seed), validation capped at `data.val_max_sequences`
    (default 64). The exporter's only reader of data."""
    data = ckpt.config.data
    try:
        dataset = load_jsonl_dataset(data, tokenizer, seq_len, ckpt.config.seed)
    except DataError as e:
        raise ExportError(f"validation text of the checkpoint's config: {e}") from None
    val = dataset.val_idx[: data.val_max_sequences or DEFAULT_EVAL_SEQUENCES]
    return TextWindows(train=dataset.x[dataset.train_idx], val=dataset.x[val])


def _eos_ids(model, tokenizer) -> list[int]:
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            return sorted({int(t) for t in (eos if isinstance(eos, list | tuple) else [eos])})
    if tokenizer.eos_token_id is None:
        raise ExportError("the model names no end-of-sequence token (config.json eos_token_id); set one")
    return [int(tokenizer.eos_token_id)]


class HfCausalLmExporter:
    """The `hf-causal-lm` family's `runtime.export.families.spec.Exporter`."""

    def __init__(self, cfg: ExportConfig, ckpt: Consolidated):
        if cfg.quantization != "dynamic" or cfg.per_channel:
            raise ExportError(
                "--quantization/--per-channel select onnxruntime.quantization int8 (mlp, gpt); hf-causal-lm "
                "models are quantized by onnxruntime-genai's builder: use --precision int4|int8|fp32"
            )
        if cfg.ffn_prune_fraction:
            raise ExportError("--ffn-prune-fraction is for gpt models; hf-causal-lm models prune with --prune-layers")
        self.cfg, self.ckpt = cfg, ckpt
        self.source = ckpt.tag_dir / HF_DIR
        self.tokenizer = load_tokenizer(self.source)
        self.model = merged_model(ckpt.model)
        self.num_layers = len(layers.decoder_layers(self.model))
        if cfg.prune_layers >= self.num_layers:
            raise ExportError(
                f"--prune-layers {cfg.prune_layers} is invalid: the model has {self.num_layers} decoder layers; "
                f"remove at most {self.num_layers - 1}"
            )
        if cfg.heal_steps and not cfg.prune_layers:
            raise ExportError(f"--heal-steps {cfg.heal_steps} heals a pruned model; add --prune-layers N or drop it")
        context = int(getattr(self.model.config, "max_position_embeddings", ckpt.config.model.seq_len))
        self.context = context
        self.windows = read_windows(ckpt, self.tokenizer, min(ckpt.config.model.seq_len, context))
        self.hf_dir = cfg.run_dir / "hf-export" / ckpt.tag
        self.quantization = f"{cfg.precision} weight-only, onnxruntime-genai"

    def compress(self) -> Compressed:
        cfg, fp32 = self.cfg, self.model
        save_hf_dir(fp32, self.source, self.hf_dir)
        details = [f"Hugging Face directory (safetensors, tokenizer): {self.hf_dir}"]
        report: dict[str, Any] = {
            "method": "decoder layer removal by block input/output cosine similarity",
            "prune_layers": cfg.prune_layers,
            "heal_steps": cfg.heal_steps,
            "layers_before": self.num_layers,
            "params_fp32": count_parameters(fp32),
            "quantization": {"precision": cfg.precision, "tool": "onnxruntime-genai model builder"},
        }
        pruned = fp32
        if cfg.prune_layers:
            similarity = layers.layer_similarity(fp32, self.windows.val)
            removed = layers.layers_to_remove(similarity, cfg.prune_layers)
            pruned = layers.drop_layers(fp32, removed)
            report["layer_similarity"] = [round(s, 6) for s in similarity]
            report["removed_layers"] = removed
            details += [
                f"layer {i}: input/output cosine similarity {s:.4f}{'  (removed)' if i in removed else ''}"
                for i, s in enumerate(similarity)
            ]
            if cfg.heal_steps:
                lr = cfg.finetune_lr or self.ckpt.config.optim.lr
                losses = layers.heal(
                    pruned, self.windows.train, steps=cfg.heal_steps, lr=lr, seed=self.ckpt.config.seed
                )
                report["heal"] = {"lr": lr, "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}
                details.append(
                    f"healed {cfg.heal_steps} AdamW steps at lr {lr:g}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
                )
        report["layers_after"] = len(layers.decoder_layers(pruned))
        report["params_pruned"] = count_parameters(pruned)
        line = (
            f"removed {cfg.prune_layers} of {self.num_layers} decoder layers: "
            f"{report['params_fp32']} -> {report['params_pruned']} parameters"
        )
        return Compressed(fp32=fp32, pruned=pruned, report=report, line=line, details=details)

    def to_onnx(self, compressed: Compressed, work: Path) -> Built:
        cfg = self.cfg
        source = self.hf_dir
        if compressed.pruned is not compressed.fp32:
            source = save_hf_dir(compressed.pruned, self.source, work / "hf-pruned")
        served = build_genai(source, work / SERVED, precision=cfg.precision, device=cfg.device)
        paths = {SERVED: served.path}
        fp32_bytes = weights_bytes(self.hf_dir)
        sizes: dict[str, Any] = {
            "fp32_safetensors": fp32_bytes,
            "pruned_fp32_safetensors": weights_bytes(source),
            "artifact": served.bytes,
            "artifact_vs_fp32_safetensors": round(served.bytes / fp32_bytes, 4),
            "precision": cfg.precision,
        }
        if cfg.compare:
            for precision in PRECISION_CHOICES:
                if precision != cfg.precision:
                    other = build_genai(source, work / f"compare-{precision}", precision=precision, device=cfg.device)
                    paths[precision] = other.path
                    sizes[f"compare_{precision}"] = other.bytes
        line = (
            f"onnxruntime-genai {cfg.precision} build for {cfg.device} in {served.seconds:.1f}s: "
            f"{served.bytes} bytes ({sizes['artifact_vs_fp32_safetensors']:.3f}x the fp32 safetensors, {fp32_bytes})"
        )
        return Built(artifact=served.path, paths=paths, sizes=sizes, line=line)

    def measure(self, compressed: Compressed, paths: dict[str, Path]) -> Measured:
        cfg, val = self.cfg, self.windows.val
        threads = cfg.latency_threads
        fp32_ppl = evaluate.perplexity_torch(compressed.fp32, val)
        pruned_ppl = fp32_ppl
        if compressed.pruned is not compressed.fp32:
            pruned_ppl = evaluate.perplexity_torch(compressed.pruned, val)
        served_ppl = evaluate.perplexity_onnx(evaluate.onnx_scorer(paths[SERVED], threads, cfg.device), val)
        metrics: dict[str, Any] = {
            "metric": "perplexity",
            "split": "validation",
            "sequences": len(val),
            "tokens": int(val[:, 1:].size),
            "fp32": {"perplexity": fp32_ppl, "runtime": "torch"},
            "pruned_fp32": {"perplexity": pruned_ppl, "runtime": "torch"},
            "exported": {"perplexity": served_ppl, "runtime": "onnxruntime", "precision": cfg.precision},
            "tolerance_percent": cfg.perplexity_tolerance,
        }
        compare = {
            key: evaluate.perplexity_onnx(evaluate.onnx_scorer(path, threads, cfg.device), val)
            for key, path in paths.items()
            if key != SERVED
        }
        if compare:
            metrics["compare"] = {key: {"perplexity": ppl} for key, ppl in compare.items()}
        prompt = [int(t) for t in val[0, :LATENCY_PROMPT_TOKENS]]
        iters = min(cfg.latency_iters, LATENCY_MAX_ITERS)
        model = evaluate.genai_model(paths[SERVED], threads)
        latency = {
            "threads": threads,
            "runtime": "onnxruntime-genai",
            **evaluate.genai_latency(model, prompt, LATENCY_NEW_TOKENS, iters),
        }
        line = (
            f"validation perplexity ({len(val)} sequences): fp32 {fp32_ppl:.3f} | pruned fp32 {pruned_ppl:.3f} "
            f"| {cfg.precision} served {served_ppl:.3f}; batch 1: first token "
            f"{latency['time_to_first_token_ms']:.1f} ms, decode {latency['decode_tokens_per_s']} tokens/s"
        )
        return Measured(metrics=metrics, latency=latency, line=line)

    def gate(self, measured: Measured) -> str:
        metrics, tolerance = measured.metrics, self.cfg.perplexity_tolerance
        reference, served = metrics["fp32"]["perplexity"], metrics["exported"]["perplexity"]
        increase = 100.0 * (served - reference) / reference
        metrics["perplexity_increase_percent"] = round(increase, 4)
        if increase > tolerance:
            raise GateError(
                f"gate failed: validation perplexity fine-tuned torch {reference:.3f} -> served "
                f"{self.cfg.precision} {served:.3f} (+{increase:.2f}% > tolerance {tolerance:g}%); nothing was "
                "staged or published. Remove fewer layers (--prune-layers), heal longer (--heal-steps), "
                "try --precision int8, or raise --perplexity-tolerance"
            )
        return f"gate passed (perplexity {increase:+.2f}% <= {tolerance:g}%)"

    def io_spec(self) -> tuple[list[dict], list[dict]]:
        inputs = [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}]
        outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, -1, int(self.model.config.vocab_size)]}]
        return inputs, outputs

    def manifest_sections(self) -> dict[str, Any]:
        info = {
            "runtime": "onnxruntime-genai",
            "tokenizer": "huggingface",
            "max_seq_len": self.context,
            "eos_token_ids": _eos_ids(self.model, self.tokenizer),
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "precision": self.cfg.precision,
            "vocab_size": int(self.model.config.vocab_size),
            "device": self.cfg.device,
        }
        return {"language_model": info}
