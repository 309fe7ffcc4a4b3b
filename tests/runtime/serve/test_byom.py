"""Bring your own model, as a user runs it: a Hugging Face directory and a chat JSONL through
`scripts/launch.sh --preset hf-tiny --model-dir DIR --data chat.jsonl` (ZeRO-3 fine-tune on 2 ranks,
int4 export with a KV cache, perplexity gate, publish), then `stratus serve` on the repository it
published, answering the stock OpenAI Python client with a streamed chat completion."""

from __future__ import annotations

import json

import openai

from runtime.repository.artifact import verify_artifact
from tests.runtime.export.serving import TOKEN, serving

MESSAGES = [{"role": "user", "content": "What is 12 plus 30?"}]


def test_launch_fine_tunes_exports_int4_gates_and_publishes(hf_launch, tiny_llama_dir):
    out = hf_launch.output
    assert "[launch] training hf-tiny" in out and "[launch] exporting" in out, out[-4000:]
    summary = json.loads((hf_launch.run_dir / "summary.json").read_text())
    assert summary["zero_stage"] == 3 and summary["world_size"] == 2
    version = hf_launch.repo / "hf-tiny" / "1"
    manifest = verify_artifact(version)
    assert manifest["language_model"]["runtime"] == "onnxruntime-genai"
    assert manifest["language_model"]["precision"] == "int4"
    metrics = manifest["metrics"]
    assert metrics["perplexity_increase_percent"] <= metrics["tolerance_percent"] == 5
    assert manifest["provenance"]["zero_stage"] == 3
    # the user's directory is where it was: nothing was written into it
    assert sorted(p.name for p in tiny_llama_dir.iterdir()) == sorted(
        ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors"]
        + ["tokenizer.json", "tokenizer_config.json"]
    )


def test_the_published_model_answers_a_streamed_chat_completion(hf_launch, tmp_path):
    with serving(hf_launch.repo, "hf-tiny", tmp_path) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)
        chunks = list(
            client.chat.completions.create(
                model="hf-tiny", messages=MESSAGES, max_tokens=12, temperature=0, stream=True
            )
        )
        whole = client.chat.completions.create(model="hf-tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed and streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 5
