"""The OpenAI-compatible API on a served onnxruntime-genai model (int4, KV cache), end to end.

A real `python -m runtime serve` process on 127.0.0.1 serving the session's tiny Llama built with
the library's model builder; clients are the stock `openai` package and httpx. The reference is
the same artifact run here with onnxruntime-genai and a plain greedy loop.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from tests.runtime.serve.conftest import GENAI_MAX_TOKENS, GENAI_MODEL

MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def main(args):"}]
PROMPT = "import os\nimport sys\n\ndef main("


@pytest.fixture(scope="module")
def reference(genai_artifact):
    """Greedy generation with onnxruntime-genai in this process: (text, token count, prompt tokens)."""
    import onnxruntime_genai as og

    model = og.Model(str(genai_artifact))
    tokenizer = og.Tokenizer(model)

    def greedy(prompt: str, max_tokens: int) -> tuple[str, int, int]:
        ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + max_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        new = []
        while not generator.is_done():
            generator.generate_next_token()
            new.append(int(generator.get_next_tokens()[0]))
        return tokenizer.decode(new), len(new), len(ids)

    greedy.count = lambda text: len(tokenizer.encode(text))
    greedy.chat = lambda messages: tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    return greedy


@pytest.fixture(scope="module")
def client(genai_server):
    from tests.runtime.export.serving import TOKEN

    return openai.OpenAI(base_url=f"{genai_server.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)


def post(server, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=server.auth, timeout=60, **kw)


def test_models_list_names_the_served_model(client):
    assert [m.id for m in client.models.list()] == [GENAI_MODEL]
    assert client.models.retrieve(GENAI_MODEL).id == GENAI_MODEL


def test_a_streamed_chat_completion_joins_to_the_greedy_text_of_the_chat_template(client, reference):
    full = client.chat.completions.create(model=GENAI_MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    text, count, num_prompt = reference(reference.chat(MESSAGES), 24)
    choice = full.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", text, "length")
    assert (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens) == (
        num_prompt,
        count,
        num_prompt + count,
    )
    stream = client.chat.completions.create(
        model=GENAI_MODEL,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == count
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_completions_equal_direct_greedy_generation_and_count_usage(client, reference):
    text, count, num_prompt = reference(PROMPT, 20)
    done = client.completions.create(model=GENAI_MODEL, prompt=PROMPT, max_tokens=20, temperature=0)
    assert (done.choices[0].text, done.choices[0].finish_reason) == (text, "length")
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (num_prompt, count)
    streamed = client.completions.create(model=GENAI_MODEL, prompt=PROMPT, max_tokens=20, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text
    versioned = client.completions.create(model=f"{GENAI_MODEL}:1", prompt=PROMPT, max_tokens=20, temperature=0)
    assert versioned.choices[0].text == text


def test_a_stop_string_cuts_the_text_and_finishes_with_stop(client):
    # seeded sampling repeats itself (test_sampling_with_a_seed_repeats) and, unlike the greedy text
    # of a tiny model, does not settle into one repeated token: there is text to stop in
    sampled = {"max_tokens": 20, "temperature": 1.0, "seed": 11}
    text = client.completions.create(model=GENAI_MODEL, prompt=PROMPT, **sampled).choices[0].text
    stop = text[5:9]
    assert stop.strip() and text.find(stop) > 0, text
    done = client.completions.create(model=GENAI_MODEL, prompt=PROMPT, stop=[stop, "@@"], **sampled)
    assert (done.choices[0].text, done.choices[0].finish_reason) == (text[: text.find(stop)], "stop")
    streamed = client.completions.create(model=GENAI_MODEL, prompt=PROMPT, stop=stop, stream=True, **sampled)
    assert "".join(c.choices[0].text for c in streamed) == text[: text.find(stop)]


def test_sampling_with_a_seed_repeats(client):
    def sample(seed):
        kw = {"max_tokens": 16, "temperature": 0.9, "top_p": 0.95, "seed": seed}
        return client.completions.create(model=GENAI_MODEL, prompt=PROMPT, **kw).choices[0].text

    assert sample(7) == sample(7)
    assert sample(1 << 40) == sample(1 << 40)


def test_without_the_token_the_api_answers_401_in_openai_shape(genai_server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{genai_server.url}/v1", api_key="wrong-token-0123456789", max_retries=0).models.list()
    response = httpx.post(f"{genai_server.url}/v1/chat/completions", json={}, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"messages": "hello"}, 400, "messages"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content[0]"),
        ({"model": "other"}, 404, "model"),
        ({"model": f"{GENAI_MODEL}:2"}, 404, "model"),
        ({"n": 2}, 400, "n"),
        ({"max_tokens": -1}, 400, "max_tokens"),
        ({"max_tokens": GENAI_MAX_TOKENS + 1}, 400, "max_tokens"),
        ({"max_completion_tokens": "many"}, 400, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"temperature": 3}, 400, "temperature"),
        ({"seed": -1}, 400, "seed"),
        ({"stream_options": {"include_usage": True}}, 400, "stream_options"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages"),
    ],
    ids=lambda v: str(v)[:40] if not isinstance(v, int) else str(v),
)
def test_bad_chat_requests_name_the_field(genai_server, change, status, param):
    body = {"model": GENAI_MODEL, "messages": MESSAGES, "max_tokens": 4, **change}
    response = post(genai_server, "/v1/chat/completions", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"], error


def near_context(reference) -> str:
    """A prompt of 480 to 512 tokens: it fits the context of 512, but not with 64 new tokens."""
    near = "import os\n"
    while reference.count(near + "import os\n") < 500:
        near += "import os\n"
    assert 480 <= reference.count(near) < 512
    return near


def test_a_prompt_and_max_tokens_over_the_context_is_refused_not_truncated(genai_server, reference):
    long = post(genai_server, "/v1/completions", {"model": GENAI_MODEL, "prompt": "x " * 600})
    assert long.status_code == 400
    assert long.json()["error"]["param"] == "prompt" and long.json()["error"]["code"] == "context_length_exceeded"
    empty = post(genai_server, "/v1/completions", {"model": GENAI_MODEL, "prompt": ""})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt"
    near = near_context(reference)
    response = post(genai_server, "/v1/completions", {"model": GENAI_MODEL, "prompt": near, "max_tokens": 64})
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens", response.text
    assert "context of 512" in response.json()["error"]["message"]


def test_generate_on_a_genai_artifact_runs_on_the_same_backend(genai_server, reference):
    text, count, num_prompt = reference(PROMPT, 12)
    url = f"/v2/models/{GENAI_MODEL}/generate"
    response = post(genai_server, url, {"text_input": PROMPT, "parameters": {"max_tokens": 12}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["text_output"], body["finish_reason"], body["generated_tokens"]) == (text, "length", count)
    assert body["prompt_tokens"] == num_prompt
    over = post(genai_server, url, {"text_input": near_context(reference), "parameters": {"max_tokens": 64}})
    assert over.status_code == 422 and "context of 512" in over.json()["error"]
    infer = post(genai_server, f"/v2/models/{GENAI_MODEL}/infer", {"inputs": []})
    assert infer.status_code == 400


def test_four_streams_finish_while_liveness_answers(genai_server, client):
    """4 concurrent streams (the default cap), 3 each, all finish; liveness is polled meanwhile.

    The latencies are printed (`-s`); the bound asserted is loose on purpose (a shared 2-core
    machine): generation never runs on the event loop, so liveness must not wait for a stream."""
    results, errors = [], []

    def stream(i: int) -> None:
        try:
            for rep in range(3):
                chunks = client.completions.create(
                    model=GENAI_MODEL,
                    prompt=f"{PROMPT}{i}{rep}",
                    max_tokens=GENAI_MAX_TOKENS,
                    temperature=0,
                    stream=True,
                )
                results.append([c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason])
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    latencies = []
    with httpx.Client(base_url=genai_server.url, timeout=10) as http:
        while any(t.is_alive() for t in threads) and len(latencies) < 10_000:
            start = time.perf_counter()
            assert http.get("/v2/health/live").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.002)
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == [["length"]] * 12, (errors, results)
    latencies.sort()
    p50, worst = latencies[len(latencies) // 2], latencies[-1]
    print(f"liveness during 4 streams: n={len(latencies)} p50={p50 * 1e3:.1f} ms max={worst * 1e3:.1f} ms")
    assert p50 < 0.5
