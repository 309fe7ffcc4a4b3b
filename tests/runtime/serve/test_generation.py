"""The generation backend interface in process: stop strings, finish reasons, the concurrency cap,
the OpenAI adapter on a model without a chat template, and genai artifacts refused at load."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from runtime.repository.artifact import ArtifactError
from runtime.repository.publish import publish
from runtime.repository.store import open_repo
from runtime.serve import genai, openai_api
from runtime.serve.app import ServeApp
from runtime.serve.auth import Authenticator
from runtime.serve.body import Refused
from runtime.serve.dataplane import DataPlane
from runtime.serve.generate import Generate
from runtime.serve.generation import Finish, GenerationLimits, Generations, Piece, Sampling, next_token, steps
from runtime.serve.metrics import Metrics
from runtime.serve.model import load_version
from runtime.serve.protocol import Limits
from tests.runtime.serve.conftest import GENAI_MODEL

TOKEN = "generation-token-0123456789abcdef"


class Scripted:
    """A backend that generates a fixed list of token texts (our own interface, no library)."""

    max_seq_len = 100
    slides = False
    chat_template = False

    def __init__(self, texts: list[str], eos: bool = False, delay: float = 0.0):
        self.texts, self.eos, self.delay = texts, eos, delay

    def encode(self, text: str) -> list[int]:
        return list(range(len(text)))

    def tokens(self, req: Sampling):
        for text in self.texts[: req.max_tokens]:
            time.sleep(self.delay)
            yield 1, text, False
        if self.eos and len(self.texts) < req.max_tokens:
            yield 0, "", True


def run(backend, max_tokens: int = 10, stop: tuple[str, ...] = (), timeout: float = 10.0) -> tuple[str, Finish]:
    req = Sampling(prompt_ids=(1, 2, 3), max_tokens=max_tokens, stop=stop)
    items = list(steps(backend, req, time.monotonic() + timeout, threading.Event()))
    assert all(isinstance(i, Piece) for i in items[:-1]) and isinstance(items[-1], Finish)
    return "".join(i.text for i in items[:-1]), items[-1]


def test_finish_reasons_and_counts():
    assert run(Scripted(["a", "b", "c"]), max_tokens=3) == ("abc", Finish("length", 3, 3))
    assert run(Scripted(["a", "b"], eos=True), max_tokens=5) == ("ab", Finish("stop", 3, 2))
    text, finish = run(Scripted(["a"] * 50, delay=0.01), max_tokens=50, timeout=0.1)
    assert finish.reason == "time_limit" and 0 < finish.completion_tokens < 50 and text == "a" * len(text)


@pytest.mark.parametrize(
    ("pieces", "stop", "text"),
    [
        (["hel", "lo wo", "rld"], ("o w",), "hell"),  # across two pieces
        (["ab", "c", "d", "ef"], ("cde", "zz"), "ab"),  # across three
        (["ab", "cd"], ("x",), "abcd"),  # never: all of the text, finish length
        (["STOP", "more"], ("STOP",), ""),  # at once
        (["a\u00e9", "\u00e9b"], ("\u00e9\u00e9",), "a"),
    ],
)
def test_stop_strings_cut_the_text_wherever_they_fall(pieces, stop, text):
    got, finish = run(Scripted(pieces), max_tokens=len(pieces), stop=stop)
    assert got == text
    assert finish.reason == ("length" if text == "".join(pieces) else "stop")


def test_a_request_over_the_concurrency_cap_waits_then_is_refused_naming_the_flag():
    async def main():
        generations = Generations(GenerationLimits(max_concurrency=1, queue_timeout=0.2))
        slow = Scripted(["x"] * 100, delay=0.01)
        first = await generations.start(slow, Sampling(prompt_ids=(1,), max_tokens=100))
        assert isinstance(await first.__anext__(), Piece)
        with pytest.raises(Refused) as caught:
            await generations.start(slow, Sampling(prompt_ids=(1,), max_tokens=1))
        assert caught.value.status == 503 and "--generate-max-concurrency" in caught.value.message
        assert caught.value.retry_after
        await first.aclose()  # the client went away: the slot frees once the thread stops
        second = await generations.start(slow, Sampling(prompt_ids=(1,), max_tokens=2))
        assert [i async for i in second][-1] == Finish("length", 1, 2)
        generations.stop()

    asyncio.run(main())


def _call(app: ServeApp, path: str, body: dict) -> tuple[int, dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", b"Bearer " + TOKEN.encode()), (b"content-type", b"application/json")]
    scope = {"type": "http", "method": "POST", "path": path, "client": ("127.0.0.1", 1), "headers": headers}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], orjson.loads(sent[1]["body"])


@pytest.fixture(scope="module")
def loaded(genai_artifact, tmp_path_factory):
    """Version 1 of the genai artifact loaded as the server loads it."""
    repo = tmp_path_factory.mktemp("genai-load") / "repo"
    publish(genai_artifact, str(repo), model_name=GENAI_MODEL)
    return repo, load_version(open_repo(str(repo)), GENAI_MODEL, 1, max_batch_size=1)


def test_a_model_without_a_chat_template_answers_400_naming_completions(loaded):
    _, model = loaded
    assert model.session is None and model.generator.chat_template
    model.generator.chat_template = False  # what a manifest with "chat_template": false loads as
    try:
        plane = DataPlane(
            SimpleNamespace(model=GENAI_MODEL, current=model),
            Authenticator(TOKEN),
            Metrics(),
            limits=Limits(),
            max_body_bytes=1 << 16,
        )
        plane.add_extension(Generate.name, Generate(GenerationLimits()))
        app = ServeApp(plane)
        openai_api.mount(app)
        messages = [{"role": "user", "content": "hi"}]
        status, body = _call(app, "/v1/chat/completions", {"model": GENAI_MODEL, "messages": messages})
        assert status == 400 and body["error"]["param"] == "messages"
        assert "/v1/completions" in body["error"]["message"]
        status, body = _call(app, "/v1/completions", {"model": GENAI_MODEL, "prompt": "def", "max_tokens": 3})
        assert status == 200 and body["usage"]["completion_tokens"] == 3
    finally:
        model.generator.chat_template = True


@pytest.mark.parametrize("damage", ["tamper", "remove"])
def test_a_tampered_or_missing_weight_file_is_refused_at_load(loaded, tmp_path, damage):
    repo, _ = loaded
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    weights = copy / GENAI_MODEL / "1" / "model.onnx.data"
    if damage == "tamper":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 1
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx\.data"):
        load_version(open_repo(str(copy)), GENAI_MODEL, 1, max_batch_size=1)


def _texts(backend, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy generations of `prompts` started together, one thread each (as the server's slots are)."""
    out: dict[int, str] = {}

    def run(i: int) -> None:
        req = Sampling(prompt_ids=tuple(backend.encode(prompts[i])), max_tokens=max_tokens)
        out[i] = "".join(text for _, text, _ in backend.tokens(req))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return [out[i] for i in range(len(prompts))]


def test_concurrent_generations_share_the_engine_steps_and_keep_their_greedy_text(loaded):
    """Four requests at once are decoded in shared steps (batched), each as it would be alone."""
    backend = loaded[1].generator
    prompts = [f"def f{i}(x):\n    return" for i in range(4)]
    alone = [_texts(backend, [p], 24)[0] for p in prompts]
    steps_before = backend.engine.steps
    together = _texts(backend, prompts, 24)
    assert together == alone
    assert backend.engine.peak_batch >= 2
    # batched, four requests of 24 tokens took fewer steps than 4 x 24 one at a time
    assert backend.engine.steps - steps_before < 4 * 24


def test_closing_a_generation_cancels_its_engine_request(loaded):
    """A client that goes away (the iterator closed mid-stream) frees its place in the batch."""
    backend = loaded[1].generator
    tokens = backend.tokens(Sampling(prompt_ids=tuple(backend.encode("def g():")), max_tokens=200))
    next(tokens)
    tokens.close()
    deadline = time.monotonic() + 10
    while backend.engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.engine.running == 0
    steps = backend.engine.steps
    time.sleep(0.2)
    assert backend.engine.steps == steps  # idle: no step runs without a request


def test_a_genai_manifest_without_a_context_length_is_refused(genai_artifact, tmp_path):
    with pytest.raises(ArtifactError, match="max_seq_len"):
        genai.load(genai_artifact, {"language_model": {"runtime": genai.RUNTIME}, "files": {}})


class Sampled(Scripted):
    """A backend that samples each token from fixed logits with the server's own sampler."""

    def tokens(self, req: Sampling):
        rng = np.random.default_rng(req.seed)
        logits = np.linspace(-3.0, 3.0, 16)
        for _ in range(req.max_tokens):
            yield 1, str(next_token(logits, req, rng)), False


def _plane(backend, limits: GenerationLimits) -> ServeApp:
    model = SimpleNamespace(name="m", version=1, version_str="1", manifest={}, generator=backend, session=None)
    plane = DataPlane(
        SimpleNamespace(model="m", current=model),
        Authenticator(TOKEN),
        Metrics(),
        limits=Limits(),
        max_body_bytes=1 << 16,
    )
    plane.add_extension(Generate.name, Generate(limits))
    app = ServeApp(plane)
    openai_api.mount(app)
    return app


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-4])
def test_a_tiny_positive_temperature_decodes_greedily(temperature):
    """Logits divided by 5e-324 overflow: such a temperature is greedy decoding, not a 500."""
    app = _plane(Sampled([]), GenerationLimits())
    body = {"text_input": "abc", "parameters": {"max_tokens": 3, "temperature": temperature}}
    status, out = _call(app, "/v2/models/m/generate", body)
    assert status == 200, out
    assert out["text_output"] == "15" * 3  # the argmax of the logits, every time
    status, out = _call(
        app, "/v1/completions", {"model": "m", "prompt": "abc", "max_tokens": 2, "temperature": temperature}
    )
    assert status == 200 and out["choices"][0]["text"] == "15" * 2, out


class Counting(Scripted):
    """A slow backend that counts the tokens it produced (from its worker thread)."""

    max_seq_len = 1000

    def __init__(self):
        super().__init__(["x"] * 1000, delay=0.01)
        self.produced = 0

    def tokens(self, req: Sampling):
        for item in super().tokens(req):
            self.produced += 1
            yield item


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/models/m/generate", {"text_input": "abc", "parameters": {"max_tokens": 500}}),
        ("/v2/models/m/generate_stream", {"text_input": "abc", "parameters": {"max_tokens": 500}}),
        ("/v1/completions", {"model": "m", "prompt": "abc", "max_tokens": 500}),
        ("/v1/completions", {"model": "m", "prompt": "abc", "max_tokens": 500, "stream": True}),
    ],
    ids=["generate", "generate_stream", "completions", "completions_stream"],
)
def test_a_client_that_goes_away_stops_its_generation(path, body):
    """The client disconnects 0.3 s into a 5 s generation: the answer ends at once (499, no
    more bytes) and the backend stops producing tokens."""
    backend = Counting()
    app = _plane(backend, GenerationLimits(max_tokens=500, timeout=3.0))
    sent = []

    async def main() -> float:
        start = time.monotonic()
        calls = 0

        async def receive():
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
            await asyncio.sleep(max(0.0, start + 0.3 - time.monotonic()))
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        headers = [(b"authorization", b"Bearer " + TOKEN.encode()), (b"content-type", b"application/json")]
        scope = {"type": "http", "method": "POST", "path": path, "client": ("127.0.0.1", 1), "headers": headers}
        await app(scope, receive, send)
        return time.monotonic() - start

    seconds = asyncio.run(main())
    assert seconds < 1.5, f"the answer went on for {seconds:.1f} s after the client left"
    time.sleep(0.1)  # the worker stops at its next token
    produced = backend.produced
    time.sleep(0.3)
    assert backend.produced == produced < 150, (produced, backend.produced)
    assert all(m.get("more_body") for m in sent if m["type"] == "http.response.body"), sent[-1:]  # never ended
    app.plane.extension("generate").stop()
