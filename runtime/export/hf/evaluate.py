"""Measuring an `hf-causal-lm` export: perplexity of torch and served models, greedy tokens, latency.

- `perplexity_torch`: the `transformers` model on windows `[n, seq_len + 1]` (inputs `[:, :-1]`).
- `perplexity_onnx`: the built ONNX graph itself, in an ONNX Runtime session, fed each whole
  window at once with empty past keys/values (the prompt step the generator runs), so the served
  weights and kernels are scored exactly as in serving, on the same windows as torch.
- `greedy_genai` / `greedy_torch`: the first new tokens of greedy generation with
  onnxruntime-genai's generator (key/value cache) and with `transformers` `generate`: a check
  that the build is right beyond perplexity.
- `genai_latency`: time to first token and decode tokens/s at batch 1 with the generator.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from runtime.export.lm import perplexity

PPL_BATCH = 8
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def perplexity_torch(model: nn.Module, windows: np.ndarray, batch: int = PPL_BATCH) -> float:
    """exp(mean next-token cross-entropy) of a `transformers` causal LM over `windows`."""
    return perplexity(lambda ids: model(input_ids=torch.from_numpy(ids), use_cache=False).logits, windows, batch)


@dataclass
class OnnxScorer:
    """An ONNX Runtime session over a built directory's `model.onnx` (weights from its external
    data) and the key/value head size its `genai_config.json` states."""

    session: ort.InferenceSession
    head_size: int


def onnx_scorer(model_dir: Path, threads: int = 1, device: str = "cpu") -> OnnxScorer:
    """An `OnnxScorer` of the directory `build.build_genai` wrote (for `device`: cpu or cuda)."""
    model_dir = Path(model_dir)
    decoder = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(model_dir / decoder["filename"]), options, providers=providers)
    return OnnxScorer(session=session, head_size=int(decoder["head_size"]))


def _feeds(scorer: OnnxScorer, ids: np.ndarray) -> dict[str, np.ndarray]:
    batch, seq = ids.shape
    feeds: dict[str, np.ndarray] = {}
    for spec in scorer.session.get_inputs():
        if spec.name == "input_ids":
            feeds[spec.name] = ids.astype(np.int64)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((batch, seq), dtype=np.int64)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()
        elif spec.name.startswith("past_key_values."):
            heads = spec.shape[1]  # [batch, kv_heads, past_sequence_length, head_size]
            feeds[spec.name] = np.zeros((batch, heads, 0, scorer.head_size), dtype=ORT_DTYPES[spec.type])
        else:
            raise ValueError(f"built model input {spec.name!r} ({spec.type}) is not one this scorer feeds")
    return feeds


def onnx_logits(scorer: OnnxScorer, ids: np.ndarray) -> np.ndarray:
    """Logits `[batch, seq, vocab]` of the built graph for `ids`, from an empty cache."""
    return scorer.session.run(["logits"], _feeds(scorer, ids))[0].astype(np.float32)


def perplexity_onnx(scorer: OnnxScorer, windows: np.ndarray, batch: int = PPL_BATCH) -> float:
    """exp(mean next-token cross-entropy) of the built graph over `windows`."""
    return perplexity(lambda ids: onnx_logits(scorer, ids), windows, batch)


def genai_model(model_dir: Path, threads: int = 1):
    """An onnxruntime-genai `Model` of a built directory, its decoder on `threads` CPU threads."""
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def greedy_genai(model, prompt: list[int], new_tokens: int) -> list[int]:
    """Up to `new_tokens` greedy tokens after `prompt` from onnxruntime-genai's generator (KV cache)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    out: list[int] = []
    while not generator.is_done() and len(out) < new_tokens:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def greedy_torch(model: nn.Module, prompt: list[int], new_tokens: int) -> list[int]:
    """Up to `new_tokens` greedy tokens after `prompt` from `transformers` `generate` (KV cache)."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.eos_token_id
        )
    return [int(t) for t in out[0, len(prompt) :]]


def genai_latency(model, prompt: list[int], new_tokens: int, iters: int) -> dict[str, float]:
    """Batch-1 greedy generation with the generator, `iters` times after one warm-up: median time
    to first token (prompt step + first token, ms) and decode tokens/s of the remaining tokens
    (the model may stop early at its end-of-sequence token; the rate counts what it made)."""
    import onnxruntime_genai as og

    ttft, rates = [], []
    for i in range(iters + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens)
        started = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        generator.generate_next_token()
        first = time.perf_counter()
        made = 0
        while not generator.is_done():
            generator.generate_next_token()
            made += 1
        done = time.perf_counter()
        if i:  # the first run warms up
            ttft.append((first - started) * 1e3)
            if made:
                rates.append(made / (done - first))
    return {
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "iters": iters,
        "time_to_first_token_ms": round(statistics.median(ttft), 3),
        "decode_tokens_per_s": round(statistics.median(rates), 1) if rates else None,
    }
