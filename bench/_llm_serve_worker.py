"""One row of `bench/llm_serve.py`, in its own process (so its peak RSS is its own). Not run by hand.

    python bench/_llm_serve_worker.py ENGINE MODEL_PATH OUT.json --threads 2 --prompt 128 --new 128

Engines (all greedy, the same prompt token ids, `--new` new tokens forced by ignoring end-of-text):
- `hf-eager`: `transformers` `generate` on the fp32 Hugging Face directory, eager mode, KV cache on;
- `genai`: stratus's generation backend (`runtime.serve.genai`: `onnxruntime-genai`'s batching
  engine) on a built model directory (int4/int8/fp32), the code and files `stratus serve` runs;
- `llamacpp`: `llama-cpp-python` on a GGUF file.

Per engine: time to first token (prompt processing + one token) over `--repeats` runs, decode
tokens/s of one stream (tokens after the first over the time after the first), aggregate tokens/s
of 1 and of `--streams` concurrent streams (one thread each, prompt included; the median of
`--rounds` rounds),
peak RSS of the process, and
perplexity on `--eval` token windows (a .npy of int64 [n, len]) where the engine exposes logits.
Each engine's token timestamps come from a per-token callback inside its own loop.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import threading
import time
from pathlib import Path

import numpy as np


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    return float((logz - np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]).sum())


class HfEager:
    def __init__(self, path: str, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()

    def stream(self, prompt: list[int], new: int) -> list[float]:
        torch = self.torch
        from transformers import LogitsProcessor, LogitsProcessorList

        stamps: list[float] = []

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids, scores):
                stamps.append(time.perf_counter())
                return scores

        ids = torch.tensor([prompt])
        with torch.inference_mode():
            self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                logits_processor=LogitsProcessorList([Stamp()]),
                pad_token_id=0,
            )
        return stamps

    def perplexity(self, windows: np.ndarray) -> float:
        torch = self.torch
        total, count = 0.0, 0
        with torch.inference_mode():
            for w in windows:
                logits = self.model(torch.from_numpy(w[None, :-1])).logits[0].numpy()
                total += _nll(logits, w[1:])
                count += len(w) - 1
        return math.exp(total / count)


class Genai:
    """The backend `stratus serve` runs (`runtime.serve.genai.GenaiBackend`): requests batched by
    the library's engine, `--threads` intra-op threads for its one step at a time."""

    def __init__(self, path: str, threads: int):
        from runtime.serve.genai import GenaiBackend

        context = json.loads((Path(path) / "genai_config.json").read_text())["model"]["context_length"]
        self.backend = GenaiBackend(Path(path), {"max_seq_len": context}, intra_op_threads=threads)
        self.path = path
        self.threads = threads

    def stream(self, prompt: list[int], new: int) -> list[float]:
        stamps = []
        greedy = {"temperature": 0.0}
        for count, _, _ in self.backend.engine_tokens(prompt, greedy, new, min_tokens=new):
            if count:
                stamps.append(time.perf_counter())
        return stamps

    def perplexity(self, windows: np.ndarray) -> float | None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        sess = ort.InferenceSession(str(Path(self.path) / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        decoder = json.loads((Path(self.path) / "genai_config.json").read_text())["model"]["decoder"]
        kv_heads, head_size = decoder["num_key_value_heads"], decoder["head_size"]
        total, count = 0.0, 0
        for w in windows:
            ids = w[None, :-1].astype(np.int64)
            feeds: dict[str, np.ndarray] = {}
            for inp in sess.get_inputs():
                if inp.name == "input_ids":
                    feeds[inp.name] = ids
                elif inp.name == "attention_mask":
                    feeds[inp.name] = np.ones_like(ids)
                elif inp.name == "position_ids":
                    feeds[inp.name] = np.arange(ids.shape[1], dtype=np.int64)[None]
                elif inp.name.startswith("past_key_values"):
                    dtype = np.float16 if "float16" in inp.type else np.float32
                    feeds[inp.name] = np.zeros((1, kv_heads, 0, head_size), dtype=dtype)
            logits = sess.run(["logits"], feeds)[0][0]
            total += _nll(logits, w[1:])
            count += len(w) - 1
        return math.exp(total / count)


class LlamaCpp:
    STREAMS = 4
    """Contexts made before timing: a Llama object is not thread-safe, so each concurrent stream
    takes one of its own from the pool (its load is not counted in any stream's time)."""

    def __init__(self, path: str, threads: int):
        import queue

        import llama_cpp

        self.path, self.threads, self.llama_cpp = path, threads, llama_cpp
        self.pool: queue.Queue = queue.Queue()
        for _ in range(self.STREAMS):
            llm = self._new()
            for _ in zip(range(4), llm.generate([1, 2, 3, 4], temp=0.0, top_k=1), strict=False):
                pass  # warm each context: its first call allocates its compute buffers
            self.pool.put(llm)

    def _new(self, logits_all: bool = False):
        return self.llama_cpp.Llama(
            model_path=self.path, n_threads=self.threads, n_ctx=512, logits_all=logits_all, verbose=False
        )

    def stream(self, prompt: list[int], new: int) -> list[float]:
        llm = self.pool.get()
        try:
            stamps = []
            llm.reset()  # no reuse of the previous call's prompt cache: every stream reads its prompt
            for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                stamps.append(time.perf_counter())
                if len(stamps) >= new:
                    break
            return stamps
        finally:
            self.pool.put(llm)

    def perplexity(self, windows: np.ndarray) -> float:
        llm = self._new(logits_all=True)
        total, count = 0.0, 0
        for w in windows:
            llm.reset()
            llm.eval(w[:-1].tolist())
            logits = np.asarray(llm.scores[: len(w) - 1])
            total += _nll(logits, w[1:])
            count += len(w) - 1
        return math.exp(total / count)


ENGINES = {"hf-eager": HfEager, "genai": Genai, "llamacpp": LlamaCpp}


def concurrent_rate(one_stream, streams: int) -> tuple[float, list[int]]:
    """Tokens/s of `streams` concurrent calls of `one_stream()` (each returns its token count),
    started together, one thread each, timed from the start to the last one's end."""
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(one_stream())) for _ in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start), counts


def aggregate_rates(one_stream, streams: int, rounds: int) -> dict[int, tuple[float, list[int]]]:
    """Aggregate tokens/s of 1 and of `streams` concurrent streams: `rounds` rounds, 1 then
    `streams` in each (so a noisy neighbour hits both alike); the median round of each."""
    runs: dict[int, list[tuple[float, list[int]]]] = {1: [], streams: []}
    for _ in range(rounds):
        for n in runs:
            runs[n].append(concurrent_rate(one_stream, n))
    return {n: sorted(r, key=lambda x: x[0])[len(r) // 2] for n, r in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=ENGINES)
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-ids", required=True, help="a .npy of the prompt's int64 token ids")
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the 1- and 4-stream runs (median kept)")
    p.add_argument("--eval", help="a .npy of int64 token windows for perplexity")
    args = p.parse_args()
    prompt = np.load(args.prompt_ids).astype(np.int64).tolist()
    engine = ENGINES[args.engine](args.model, args.threads)
    engine.stream(prompt, 8)  # warm-up
    ttft, decode = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        stamps = engine.stream(prompt, args.new)
        ttft.append(1000 * (stamps[0] - start))
        decode.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    aggregate = aggregate_rates(lambda: len(engine.stream(prompt, args.new)), args.streams, args.rounds)
    ppl = engine.perplexity(np.load(args.eval)) if args.eval else None
    result = {
        "engine": args.engine,
        "ttft_ms": ttft,
        "decode_tok_s": decode,
        "aggregate_tok_s": {str(n): rate for n, (rate, _) in aggregate.items()},
        "tokens_per_stream": {str(n): counts for n, (_, counts) in aggregate.items()},
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "perplexity": ppl,
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
