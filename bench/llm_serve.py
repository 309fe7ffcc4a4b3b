"""Bring-your-own-model benchmark: generation with stratus int4/int8 vs `transformers` and llama.cpp.

    PYTHONPATH=. DS_ACCELERATOR=cpu .venv/bin/python bench/llm_serve.py --work /tmp/llm-bench
    PYTHONPATH=. .venv/bin/python bench/llm_serve.py --models test --rows hf-eager,int4   # a subset
    PYTHONPATH=. .venv/bin/python bench/llm_serve.py --render /tmp/llm-bench/results.json

Models, made the way the tests make theirs (`stratus.tinyllm.make_tiny_llama`: a byte-level BPE
trained on the standard library's sources, a Llama-architecture model pre-trained on the same
text): `test` (the tests' ~1.25M-parameter model, 200 steps) and `110m` (768 wide, 12 layers,
~107M parameters, `--big-steps` steps). Each is then taken through the product as a user's model
is: `scripts/launch.sh --preset hf-tiny --model-dir DIR --data examples/chat.jsonl --no-export`
(a short ZeRO-3 fine-tune on 2 ranks), then `stratus export --precision int4` and `int8` (the Hugging
Face directory, the onnxruntime-genai build, the perplexity gate), so every row runs the same
fine-tuned weights.

Rows, each in its own process (`bench/_llm_serve_worker.py`; the same `--threads` for all, a prompt
of `--prompt` tokens from held-out standard-library text, `--new` new tokens, greedy):
- `hf-eager`: `transformers` `generate` on the exported fp32 Hugging Face directory (eager, KV cache);
- `int4`, `int8`: the exported artifacts in onnxruntime-genai, in process (what `stratus serve` runs);
- `int4-http`: `stratus serve` on the published int4 artifact, driven over HTTP by the stock OpenAI
  client (streamed completions), so its time includes the server;
- `llamacpp-q4_0`, `llamacpp-q8_0`: `llama-cpp-python` on GGUF files converted from the same Hugging
  Face directory with llama.cpp's converter (`--llamacpp-src`, the converter's source tree), when
  `llama_cpp` imports (`bench/llamacpp-requirements.txt`).

Columns: time to first token p50/p99 (`--repeats` runs), decode tokens/s of one stream, aggregate
tokens/s of 1 and 4 concurrent streams (prompt included; median of `--rounds` rounds, each
running 1 then 4 streams), peak RSS of the row's process, artifact
bytes, and perplexity on 16 held-out windows of 128 tokens (HTTP row: the int4 artifact's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _llm_http import http_row  # noqa: E402
from _llm_table import render  # noqa: E402

WORKER = ROOT / "bench" / "_llm_serve_worker.py"
MODELS = {
    # name: (make_tiny_llama shape keywords, pre-training steps or None for --big-steps)
    "test": ({}, 200),
    "110m": ({"hidden": 768, "layers": 12, "heads": 12, "kv_heads": 4, "intermediate": 3072}, None),
}
ROWS = ("hf-eager", "int4", "int8", "int4-http", "llamacpp-q4_0", "llamacpp-q8_0")


def cpu_line() -> str:
    """The CPU model and its vector extensions (the table's machine)."""
    model, flags = platform.processor() or "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return f"{model}; {os.cpu_count()} cores; {', '.join(f for f in wanted if f in flags) or 'no AVX2'}"


def run(cmd: list[str], **kw) -> None:
    print("$", " ".join(cmd), flush=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "DS_ACCELERATOR": "cpu"}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, **kw)


def prepare(name: str, args: argparse.Namespace) -> dict:
    """Make the model, fine-tune it through launch.sh, export int4 and int8; return the paths."""
    from stratus.tinyllm import TinyLlama, make_tiny_llama

    work = args.work / name
    shape, steps = MODELS[name]
    model_dir = work / "model"
    if not (model_dir / "config.json").is_file():
        make_tiny_llama(model_dir, TinyLlama(**shape), steps=args.big_steps if steps is None else steps)
    run_dir = work / "runs" / "ft"
    if not (run_dir / "summary.json").is_file():
        launch = [str(ROOT / "scripts" / "launch.sh"), "--preset", "hf-tiny", "--model-dir", str(model_dir)]
        launch += ["--data", str(ROOT / "examples" / "chat.jsonl"), "--output-dir", str(work / "runs")]
        run([*launch, "--run-name", "ft", "--no-export", "--", "--set", f"max_steps={args.ft_steps}"])
    paths = {"model": model_dir, "run": run_dir}
    for precision in ("int4", "int8"):
        out = work / precision
        if not (out / "manifest.json").is_file():
            export = [sys.executable, "-m", "runtime", "export", "--run-dir", str(run_dir), "--out", str(out)]
            export += ["--precision", precision, "--model-name", f"bench-{precision}"]
            run([*export, "--publish", str(work / "repo")])
        paths[precision] = out
    (paths["hf"],) = (run_dir / "hf-export").iterdir()
    return paths


def held_out(hf_dir: Path, args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The prompt (`--prompt` token ids) and 16 eval windows from standard-library files the
    models never saw (they pre-train on the first 150 files)."""
    from transformers import AutoTokenizer

    from runtime.train.text import stdlib_files

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    ids: list[int] = []
    for path in stdlib_files()[400:440]:
        ids += tokenizer(path.read_text("utf-8", errors="replace"))["input_ids"]
    windows = np.asarray(ids[: 16 * 129], dtype=np.int64).reshape(16, 129)
    prompt = np.asarray(ids[-args.prompt :], dtype=np.int64)
    np.save(work / "eval.npy", windows)
    np.save(work / "prompt.npy", prompt)
    return work / "prompt.npy", work / "eval.npy"


def gguf(paths: dict, args: argparse.Namespace, work: Path, quant: str) -> Path:
    """The fine-tuned Hugging Face directory converted by llama.cpp's converter, then quantized."""
    import llama_cpp

    f32 = work / "model-f32.gguf"
    if not f32.is_file():
        run(
            [
                sys.executable,
                str(ROOT / "bench" / "_gguf_convert.py"),
                str(args.llamacpp_src),
                str(paths["hf"]),
                str(f32),
            ]
        )
    out = work / f"model-{quant}.gguf"
    if not out.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[quant]
        if llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {f32} to {quant}")
    return out


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    paths = prepare(name, args)
    work = args.work / name
    prompt, windows = held_out(paths["hf"], args, work)
    results = []
    for row in args.rows:
        common = ["--threads", str(args.threads), "--prompt-ids", str(prompt), "--new", str(args.new)]
        common += ["--repeats", str(args.repeats), "--rounds", str(args.rounds), "--eval", str(windows)]
        out = work / f"{row}.json"
        if row == "int4-http":
            result = http_row(paths, work, args, prompt)
        else:
            if row.startswith("llamacpp"):
                try:
                    target = gguf(paths, args, work, row.split("-")[1])
                except ImportError:
                    print(f"{row}: llama_cpp is not installed (bench/llamacpp-requirements.txt); skipped")
                    continue
                engine = "llamacpp"
            else:
                engine, target = ("hf-eager", paths["hf"]) if row == "hf-eager" else ("genai", paths[row])
            run([sys.executable, str(WORKER), engine, str(target), str(out), *common])
            result = json.loads(out.read_text())
        result.update(model=name, row=row, artifact_bytes=artifact_bytes(row, paths, work))
        results.append(result)
        print(json.dumps({k: result[k] for k in ("model", "row", "aggregate_tok_s", "perplexity")}), flush=True)
    return results


def artifact_bytes(row: str, paths: dict, work: Path) -> int:
    if row == "hf-eager":
        return sum(p.stat().st_size for p in paths["hf"].glob("*.safetensors"))
    if row.startswith("llamacpp"):
        return (work / f"model-{row.split('-')[1]}.gguf").stat().st_size
    artifact = paths["int4" if row == "int4-http" else row]
    return sum(p.stat().st_size for p in artifact.iterdir() if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/stratus-llm-bench"))
    p.add_argument("--models", default="test,110m")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the 1- and 4-stream runs (median kept)")
    p.add_argument("--big-steps", type=int, default=20, help="pre-training steps of the 110m model")
    p.add_argument("--ft-steps", type=int, default=6, help="ZeRO-3 fine-tuning steps (hf-tiny preset)")
    p.add_argument("--llamacpp-src", type=Path, help="llama.cpp's source tree (convert_hf_to_gguf.py, gguf-py)")
    p.add_argument("--render", type=Path, help="print the table of a saved results.json and exit")
    args = p.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    args.rows = args.rows.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    saved = {"machine": cpu_line(), "threads": args.threads, "prompt": args.prompt, "new": args.new, "rows": []}
    results = args.work / "results.json"
    if results.is_file():  # a partial rerun (--models, --rows) replaces its rows, keeps the others
        saved["rows"] = json.loads(results.read_text())["rows"]
    for name in args.models.split(","):
        for row in bench_model(name, args):
            saved["rows"] = [r for r in saved["rows"] if (r["model"], r["row"]) != (name, row["row"])] + [row]
            results.write_text(json.dumps(saved, indent=1))
    print(render(saved))


if __name__ == "__main__":
    main()
