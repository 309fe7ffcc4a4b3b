"""The table of `bench/llm_serve.py` from its saved results (one row per model and engine)."""

from __future__ import annotations

import math
import statistics
from typing import Any

MIB = 2**20
LABELS = {
    "hf-eager": "transformers generate, fp32 eager, KV cache",
    "int4": "stratus int4 (onnxruntime-genai, in process)",
    "int8": "stratus int8 (onnxruntime-genai, in process)",
    "int4-http": "stratus serve int4 (HTTP, OpenAI client)",
    "llamacpp-q4_0": "llama.cpp Q4_0 (llama-cpp-python)",
    "llamacpp-q8_0": "llama.cpp Q8_0 (llama-cpp-python)",
}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def render(saved: dict[str, Any]) -> str:
    lines = [
        f"Machine: {saved['machine']}. Threads {saved['threads']}, prompt {saved['prompt']} tokens, "
        f"{saved['new']} new tokens, greedy.",
        "",
        "| model | engine | TTFT p50 / p99 ms | decode tok/s, 1 stream | vs transformers | aggregate tok/s "
        "1 / 4 streams | 4 vs 1 | peak RSS MiB | artifact MiB | perplexity |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    models = list(dict.fromkeys(r["model"] for r in saved["rows"]))
    order = list(LABELS)
    rows = sorted(saved["rows"], key=lambda r: (models.index(r["model"]), order.index(r["row"])))
    peer = {r["model"]: statistics.median(r["decode_tok_s"]) for r in rows if r["row"] == "hf-eager"}
    for r in rows:
        decode = statistics.median(r["decode_tok_s"])
        base = peer.get(r["model"])
        one, four = r["aggregate_tok_s"]["1"], r["aggregate_tok_s"]["4"]
        ppl = f"{r['perplexity']:.2f}" if r.get("perplexity") else "-"
        lines.append(
            f"| {r['model']} | {LABELS.get(r['row'], r['row'])} | {_pct(r['ttft_ms'], 0.5):.1f} / "
            f"{_pct(r['ttft_ms'], 0.99):.1f} | {decode:,.0f} | {f'{decode / base:.1f}x' if base else '-'} | "
            f"{one:,.0f} / {four:,.0f} | {four / one:.2f}x | {r['peak_rss_bytes'] / MIB:,.0f} | "
            f"{r['artifact_bytes'] / MIB:,.2f} | {ppl} |"
        )
    for r in rows:
        live = r.get("liveness_ms_during_4_streams")
        if live:
            lines.append(
                f"\n{r['model']}: liveness while 4 streams generate over HTTP ({len(live)} polls): "
                f"p50 {_pct(live, 0.5):.1f} ms, p99 {_pct(live, 0.99):.1f} ms, max {max(live):.1f} ms."
            )
    return "\n".join(lines)
