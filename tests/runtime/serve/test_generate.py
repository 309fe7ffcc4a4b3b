"""A served GPT (the session's ZeRO-3 `gpt-tiny`, exported int8): logits for token ids and the generate extension.

Real `python -m runtime serve` processes on 127.0.0.1; the reference is the same ONNX file run
here with ONNX Runtime and a plain greedy loop.
"""

from __future__ import annotations

import signal

import httpx
import numpy as np
import orjson
import pytest

from runtime.common.tokens import EOT, decode, encode
from runtime.export import onnx_export
from tests.runtime.export.serving import serving

pytestmark = pytest.mark.deepspeed

CAP = 24
PROMPT = "def main(args):\n    "


@pytest.fixture(scope="module")
def gpt_server(gpt_export, tmp_path_factory):
    _, repo = gpt_export
    work = tmp_path_factory.mktemp("gpt-serve")
    with serving(repo, "gpt", work, "--generate-max-tokens", str(CAP), "--generate-timeout", "30") as server:
        yield server


@pytest.fixture(scope="module")
def session(gpt_export):
    result, _ = gpt_export
    return onnx_export.session(result.out_dir / "model.onnx")


def greedy(session, prompt: str, max_tokens: int) -> tuple[str, str]:
    ids, new = encode(prompt), []
    for _ in range(max_tokens):
        logits = session.run(["logits"], {"input_ids": np.asarray([ids[-128:]], dtype=np.int64)})[0]
        token = int(np.argmax(logits[0, -1]))
        if token == EOT:
            return decode(new), "stop"
        ids.append(token)
        new.append(token)
    return decode(new), "length"


def post(server, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/gpt/{path}", json=body, headers=server.auth, timeout=60, **kw)


def test_infer_returns_next_token_logits_for_token_ids(gpt_server, session):
    ids = np.asarray([encode("import os\nimport sys")], dtype=np.int64)
    body = gpt_server.infer(
        [{"name": "input_ids", "shape": list(ids.shape), "datatype": "INT64", "data": ids.reshape(-1).tolist()}]
    )
    out = body["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [1, ids.shape[1], 257]
    expected = session.run(["logits"], {"input_ids": ids})[0]
    np.testing.assert_allclose(np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), expected, atol=1e-5)


def test_generate_returns_the_greedy_continuation(gpt_server, session):
    response = post(gpt_server, "generate", {"text_input": PROMPT, "parameters": {"max_tokens": 16}})
    assert response.status_code == 200, response.text
    body = response.json()
    text, reason = greedy(session, PROMPT, 16)
    assert (body["text_output"], body["finish_reason"]) == (text, reason)
    assert body["prompt_tokens"] == len(encode(PROMPT)) and body["model_name"] == "gpt"
    assert body["generated_tokens"] == (16 if reason == "length" else len(encode(text)))


def test_generate_stream_sends_server_sent_events_with_the_same_text(gpt_server, session):
    url = f"{gpt_server.url}/v2/models/gpt/generate_stream"
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 16}}
    with httpx.stream("POST", url, headers=gpt_server.auth, json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = [orjson.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 2 and events[-1]["finish_reason"] in ("length", "stop")
    assert "".join(e["text_output"] for e in events) == greedy(session, PROMPT, 16)[0]
    params = {"max_tokens": 8, "stream": True, "temperature": 0.8, "seed": 3}
    sampled = post(gpt_server, "generate", {"text_input": PROMPT, "parameters": params})
    assert sampled.headers["content-type"] == "text/event-stream" and sampled.text.count("data: ") >= 2


def test_generate_needs_the_token_and_respects_the_token_cap(gpt_server):
    anonymous = httpx.post(f"{gpt_server.url}/v2/models/gpt/generate", json={"text_input": "x"}, timeout=10)
    assert anonymous.status_code == 401
    over = post(gpt_server, "generate", {"text_input": "x", "parameters": {"max_tokens": CAP + 1}})
    assert over.status_code == 422 and f"cap of {CAP}" in over.json()["error"]
    assert post(gpt_server, "generate", {"text_input": 5}).status_code == 400


def test_generate_stops_at_the_time_cap(gpt_export, tmp_path):
    _, repo = gpt_export
    with serving(repo, "gpt", tmp_path, "--generate-max-tokens", "2000", "--generate-timeout", "0.3") as server:
        response = post(server, "generate", {"text_input": PROMPT, "parameters": {"max_tokens": 2000}})
    body = response.json()
    assert response.status_code == 200 and body["finish_reason"] == "time_limit", body
    assert 0 < body["generated_tokens"] < 2000


def test_sigterm_during_a_streaming_generation_lets_it_finish_then_exits_0(gpt_export, session, tmp_path):
    _, repo = gpt_export
    tokens = 600
    extra = ("--generate-max-tokens", str(tokens), "--generate-timeout", "60", "--drain-timeout", "30")
    with serving(repo, "gpt", tmp_path, *extra) as server:
        url = f"{server.url}/v2/models/gpt/generate_stream"
        body = {"text_input": PROMPT, "parameters": {"max_tokens": tokens}}
        with httpx.stream("POST", url, headers=server.auth, json=body, timeout=60) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            server.proc.send_signal(signal.SIGTERM)  # mid-stream: the server drains
            events = [orjson.loads(line[6:]) for line in [first, *lines] if line.startswith("data: ")]
        code = server.proc.wait(timeout=60)
        log = server.log.read_text()
    assert code == 0, log[-3000:]
    assert "1 HTTP requests in flight" in log and "0 HTTP requests cancelled" in log, log[-3000:]
    assert events[-1]["finish_reason"] in ("length", "stop")
    assert "".join(e["text_output"] for e in events) == greedy(session, PROMPT, tokens)[0]
