"""The `int4-http` row of `bench/llm_serve.py`: `stratus serve` measured through the OpenAI API.

The server runs the published int4 artifact (`--intra-op-threads` = the bench's threads, 4
concurrent generations); the client is the stock `openai` package streaming completions, one
thread per stream. Token counts come from the stream's usage chunk; time to first token is the
first chunk with text; decode tokens/s is (tokens - 1) over the time from that chunk to the last.
Peak RSS is the server process's VmHWM. While the 4 streams run, another process polls liveness
(`GET /v2/health/live`) every 20 ms and records each answer's latency.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _llm_serve_worker import concurrent_rate  # noqa: E402

TOKEN = secrets.token_hex(16)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _stream(client, model: str, prompt: str, new: int) -> tuple[float, float, float, int]:
    """(start, first text, last chunk, completion tokens) of one streamed completion."""
    start = first = last = time.perf_counter()
    tokens = 0
    chunks = client.completions.create(
        model=model, prompt=prompt, max_tokens=new, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    for chunk in chunks:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].text and first == start:
            first = now
        if chunk.choices:
            last = now
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return start, first, last, tokens


POLLER = """
import json, sys, time, urllib.request
url, stop, out = sys.argv[1:4]
latencies = []
while len(latencies) < 5000:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=5) as answer:
        answer.read()
    latencies.append(1000 * (time.perf_counter() - start))
    try:
        open(stop).close()
        break
    except FileNotFoundError:
        time.sleep(0.02)
open(out, "w").write(json.dumps(latencies))
"""
"""A separate process polling liveness every 20 ms (so the client's own threads do not delay it)."""


def _liveness_while(work: Path, url: str):
    """Start polling GET /v2/health/live; returns a function that stops it and gives the latencies (ms)."""
    stop, out = work / "liveness.stop", work / "liveness.json"
    stop.unlink(missing_ok=True)
    poller = subprocess.Popen([sys.executable, "-c", POLLER, f"{url}/v2/health/live", str(stop), str(out)])

    def finish() -> list[float]:
        stop.touch()
        poller.wait(timeout=30)
        return json.loads(out.read_text())

    return finish


def _wait_ready(server: subprocess.Popen, url: str, work: Path) -> None:
    """Until GET /v2/health/ready answers 200 (the model loaded and warmed), at most 300 s."""
    import httpx

    auth = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready", headers=auth).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"stratus serve did not become ready: {(work / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.5)


def http_row(paths: dict, work: Path, args, prompt_ids: Path) -> dict:
    import numpy as np
    import openai
    from transformers import AutoTokenizer

    from runtime.common.net import free_port

    tokenizer = AutoTokenizer.from_pretrained(str(paths["hf"]), local_files_only=True)
    prompt = tokenizer.decode(np.load(prompt_ids).tolist())
    token_file = work / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    port = free_port()
    cmd = [sys.executable, "-m", "runtime", "serve", "--repo", str(work / "repo"), "--model", "bench-int4"]
    cmd += ["--port", str(port), "--token-file", str(token_file), "--intra-op-threads", str(args.threads)]
    cmd += ["--generate-max-tokens", str(max(256, args.new)), "--generate-max-concurrency", "4", "--no-access-log"]
    cmd += ["--insecure-plain-http"]  # 127.0.0.1 only
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(work / "serve.log", "wb") as log:
        server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, max_retries=0, timeout=120)
        _wait_ready(server, f"http://127.0.0.1:{port}", work)
        _stream(client, "bench-int4", prompt, 8)  # warm-up
        ttft, decode = [], []
        for _ in range(args.repeats):
            start, first, last, tokens = _stream(client, "bench-int4", prompt, args.new)
            ttft.append(1000 * (first - start))
            decode.append((tokens - 1) / (last - first) if last > first else float("nan"))
        one = lambda: _stream(client, "bench-int4", prompt, args.new)[3]  # noqa: E731
        runs: dict[int, list] = {1: [], 4: []}
        for i in range(args.rounds):  # 1 then 4 streams per round; the last round's 4 under liveness polls
            runs[1].append(concurrent_rate(one, 1))
            if i < args.rounds - 1:
                runs[4].append(concurrent_rate(one, 4))
                continue
            finish = _liveness_while(work, f"http://127.0.0.1:{port}")
            try:
                runs[4].append(concurrent_rate(one, 4))
            finally:
                liveness = finish()
        aggregate = {n: sorted(r, key=lambda x: x[0])[len(r) // 2] for n, r in runs.items()}
        rss = _peak_rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    int4 = work / "int4.json"
    ppl = json.loads(int4.read_text()).get("perplexity") if int4.is_file() else None
    print(f"int4-http: decode tokens/s per run {[round(d) for d in decode]}, median {statistics.median(decode):.0f}")
    return {
        "engine": "stratus serve (HTTP, OpenAI API)",
        "ttft_ms": ttft,
        "decode_tok_s": decode,
        "aggregate_tok_s": {str(n): rate for n, (rate, _) in aggregate.items()},
        "tokens_per_stream": {str(n): counts for n, (_, counts) in aggregate.items()},
        "peak_rss_bytes": rss,
        "perplexity": ppl,
        "liveness_ms_during_4_streams": sorted(liveness),
    }
