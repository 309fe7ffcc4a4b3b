"""The `generate` serving extension: text from a prompt with a served language model,
protocol-neutral: registered on the data plane under the name "generate"
(`DataPlane.add_extension`), found by adapters with `plane.extension("generate")`.

`Generate.check(model)` (is it a language model), `Generate.parse(body, stream)` (the request),
then `await Generate.start(model, req)` (a running generation: `Relay`) and
`await Generate.complete(model, relay)` (the result object) or `Generate.events(model, relay)` (an
async iterator of event objects, the last one with "finish_reason"). The generation itself is the
model's backend (`runtime.serve.generation`: the key/value-cached onnxruntime-genai model, or the
byte-level gpt family's windowed graph), run in a worker thread under the server's concurrency cap
(`Generate.generations`, which the OpenAI adapter `runtime.serve.openai_api` shares).

HTTP routes (`runtime.serve.app.EXTENSION_ROUTES`; the token is required, like every route but
liveness), following Triton's generate extension:

    POST /v2/models/{model}/generate          -> {"model_name", "model_version", "text_output",
                                                  "finish_reason", "prompt_tokens", "generated_tokens"}
    POST /v2/models/{model}/generate_stream   -> text/event-stream: one `data: {"text_output": ...}`
                                                  event per decoded piece, then a final event with
                                                  "finish_reason" (also with "stream": true on /generate)

Request: `{"text_input": "def main(", "parameters": {"max_tokens": 64, "temperature": 0.8,
"top_k": 40, "top_p": 0.95, "seed": 1, "stream": false}}`. `temperature` 0 (the default) is greedy
decoding, and so is a positive temperature below 1e-3 (`generation.MIN_TEMPERATURE`). A client
that goes away stops its generation (at the next token). Caps (`stratus serve --generate-max-tokens/--generate-timeout/
--generate-max-concurrency`): a request asking for more tokens than the cap is refused (422), as
is one whose prompt and max_tokens do not fit the context of a model that cannot slide its window
(onnxruntime-genai); generation stops at the time cap with `finish_reason: "time_limit"` and
returns what it has (for a stream: a final event). Other finish reasons: `stop` (end-of-text
token), `length` (max_tokens reached). A request uses the version it started with (a hot reload
mid-generation does not switch models).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import orjson

from runtime.serve.generation import Backend, Finish, GenerationLimits, Generations, Piece, Relay, Sampling, merged
from runtime.serve.model import LoadedModel
from runtime.serve.protocol import RequestError

MAX_PROMPT_BYTES = 64 * 1024


GenerateLimits = GenerationLimits
"""The caps of the generate extension (`runtime.serve.generation.GenerationLimits`)."""


@dataclass(frozen=True)
class GenerateRequest:
    """A parsed /generate request (the prompt not yet tokenized: that is the model's)."""

    prompt: str
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    stream: bool


def _number(params: dict, key: str, default, kind, low, high):
    value = params.get(key, default)
    allowed = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise RequestError(400, f"parameters.{key} must be a{'' if kind is float else 'n integer'} number")
    if not low <= value <= high:
        raise RequestError(422, f"parameters.{key} = {value!r} is outside [{low}, {high}]")
    return kind(value)


def parse_request(body: bytes, limits: GenerateLimits, stream_route: bool) -> GenerateRequest:
    """Validate a generate request body; RequestError (400/422) names the field and the fix."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RequestError(400, 'the body is not JSON; send {"text_input": "...", "parameters": {...}}') from None
    if not isinstance(data, dict) or not isinstance(data.get("text_input"), str):
        raise RequestError(400, "'text_input' must be a string (the prompt)")
    params = data.get("parameters", {})
    if not isinstance(params, dict):
        raise RequestError(400, "'parameters' must be an object")
    prompt = data["text_input"]
    if len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise RequestError(413, f"the prompt exceeds {MAX_PROMPT_BYTES} bytes")
    if "max_tokens" in params and isinstance(params["max_tokens"], int) and params["max_tokens"] > limits.max_tokens:
        raise RequestError(
            422,
            f"parameters.max_tokens = {params['max_tokens']} exceeds this server's cap of "
            f"{limits.max_tokens}; ask for fewer tokens",
        )
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise RequestError(400, "parameters.seed must be a non-negative integer")
    stream = params.get("stream", stream_route)
    if not isinstance(stream, bool):
        raise RequestError(400, "parameters.stream must be true or false")
    return GenerateRequest(
        prompt=prompt,
        max_tokens=_number(params, "max_tokens", min(64, limits.max_tokens), int, 1, limits.max_tokens),
        temperature=_number(params, "temperature", 0.0, float, 0.0, 10.0),
        top_k=_number(params, "top_k", 0, int, 0, 1 << 16),
        top_p=_number(params, "top_p", 1.0, float, 1e-6, 1.0),
        seed=seed,
        stream=stream or stream_route,
    )


def backend_of(model: LoadedModel) -> Backend:
    """The model's generation backend, or RequestError 400 when it is not a language model."""
    if model.generator is None:
        raise RequestError(
            400,
            f"model {model.name!r} version {model.version} is not a language model "
            "(its manifest has no language_model section); use /infer",
        )
    return model.generator


def context_problem(backend: Backend, num_prompt: int, max_tokens: int) -> str | None:
    """Why `num_prompt` prompt tokens and `max_tokens` new ones do not fit the model's context
    (None when they do, or when the model slides its window and starts an empty prompt itself)."""
    if backend.slides:
        return None
    if num_prompt == 0:
        return "the prompt is empty (no tokens); send some text"
    if num_prompt + max_tokens <= backend.max_seq_len:
        return None
    return (
        f"the prompt has {num_prompt} tokens and max_tokens is {max_tokens}: {num_prompt + max_tokens} tokens, "
        f"over the model's context of {backend.max_seq_len}; shorten the prompt or ask for fewer tokens"
    )


async def _events(model: LoadedModel, relay: Relay) -> AsyncIterator[dict]:
    async with aclosing(relay):
        while items := await relay.batch():
            text, finish = merged(items)
            if text:
                yield {"text_output": text}
            if finish is not None:
                yield {
                    "text_output": "",
                    "finish_reason": finish.reason,
                    "generated_tokens": finish.completion_tokens,
                    "model_name": model.name,
                    "model_version": model.version_str,
                }


class Generate:
    """The "generate" extension of the data plane, under `GenerateLimits`.

    Args:
        limits: the caps on tokens, time and concurrent generations.
    """

    name = "generate"

    def __init__(self, limits: GenerateLimits):
        self.limits = limits
        self.generations = Generations(limits)

    @staticmethod
    def check(model: LoadedModel) -> Backend:
        """The model's generation backend, or RequestError 400 when it is not a language model."""
        return backend_of(model)

    def parse(self, body: bytes, stream: bool = False) -> GenerateRequest:
        """The request in `body` (`stream`: streaming unless it says otherwise); RequestError 400/413/422."""
        return parse_request(body, self.limits, stream)

    async def start(self, model: LoadedModel, req: GenerateRequest) -> Relay:
        """Tokenize the prompt, check it fits the context (422), and start generating once a
        generation slot is free (503 after the queue timeout)."""
        backend = backend_of(model)
        prompt_ids = backend.encode(req.prompt)
        problem = context_problem(backend, len(prompt_ids), req.max_tokens)
        if problem:
            raise RequestError(422, problem)
        sampling = Sampling(
            prompt_ids=tuple(prompt_ids),
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            seed=req.seed,
        )
        return await self.generations.start(backend, sampling)

    def stop(self) -> None:
        """Stop the worker threads (the server is shutting down)."""
        self.generations.stop()

    async def complete(self, model: LoadedModel, relay: Relay) -> dict:
        """Generate to the end; the result object."""
        pieces, finish = await collect(relay)
        return {
            "model_name": model.name,
            "model_version": model.version_str,
            "text_output": "".join(pieces),
            "finish_reason": finish.reason,
            "prompt_tokens": finish.prompt_tokens,
            "generated_tokens": finish.completion_tokens,
        }

    def events(self, model: LoadedModel, relay: Relay) -> AsyncIterator[dict]:
        """Event objects as text is decoded (`{"text_output": piece}`), then one with
        `finish_reason`; `aclose()` on the iterator stops generation."""
        return _events(model, relay)


async def collect(relay: Relay) -> tuple[list[str], Finish]:
    """All pieces of a generation and its finish."""
    pieces: list[str] = []
    async with aclosing(relay):
        async for item in relay:
            if isinstance(item, Piece):
                pieces.append(item.text)
            else:
                return pieces, item
    raise AssertionError("a generation ends with its Finish")
