"""The `generate` serving extension: text from a prompt with a served language model (model.kind=gpt
artifacts), protocol-neutral: registered on the data plane under the name "generate"
(`DataPlane.add_extension`), found by adapters with `plane.extension("generate")`.

`Generate.check(model)` (is it a language model), `Generate.parse(body, stream)` (the request),
then `await Generate.complete(model, req)` (the result object) or `Generate.events(model, req)`
(an async iterator of event objects, the last one with "finish_reason").

HTTP routes (`runtime.serve.app.EXTENSION_ROUTES`; the token is required, like every route but
liveness), following Triton's generate extension:

    POST /v2/models/{model}/generate          -> {"model_name", "model_version", "text_output",
                                                  "finish_reason", "prompt_tokens", "generated_tokens"}
    POST /v2/models/{model}/generate_stream   -> text/event-stream: one `data: {"text_output": ...}`
                                                  event per decoded piece, then a final event with
                                                  "finish_reason" (also with "stream": true on /generate)

Request: `{"text_input": "def main(", "parameters": {"max_tokens": 64, "temperature": 0.8,
"top_k": 40, "seed": 1, "stream": false}}`. `temperature` 0 (the default) is greedy decoding.
Caps (`stratus serve --generate-max-tokens/--generate-timeout`): a request asking for more
tokens than the cap is refused (422); generation stops at the time cap with
`finish_reason: "time_limit"` and returns what it has (for a stream: a final event). Other
finish reasons: `stop` (end-of-text token), `length` (max_tokens reached).

The model is the published ONNX graph (`input_ids` -> `logits`), run once per new token on the
last `max_seq_len` tokens (no key/value cache: small models, CPU), in a worker thread, on the
version the request started with (a hot reload mid-generation does not switch models).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import orjson

from runtime.serve.model import LoadedModel
from runtime.serve.protocol import RequestError

MAX_PROMPT_BYTES = 64 * 1024


@dataclass(frozen=True)
class GenerateLimits:
    max_tokens: int = 256
    """Most new tokens one request may ask for."""
    timeout: float = 30.0
    """Seconds one request may generate for; then it ends with finish_reason `time_limit`."""


@dataclass(frozen=True)
class GenerateRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_k: int
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
    from runtime.common.tokens import encode

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
        prompt_ids=encode(prompt),
        max_tokens=_number(params, "max_tokens", min(64, limits.max_tokens), int, 1, limits.max_tokens),
        temperature=_number(params, "temperature", 0.0, float, 0.0, 10.0),
        top_k=_number(params, "top_k", 0, int, 0, 1 << 16),
        seed=seed,
        stream=stream or stream_route,
    )


def language_model_info(model: LoadedModel) -> dict:
    info = model.manifest.get("language_model")
    if not isinstance(info, dict) or "max_seq_len" not in info:
        raise RequestError(
            400,
            f"model {model.name!r} version {model.version} is not a language model "
            "(its manifest has no language_model section); use /infer",
        )
    return info


def next_token(logits: np.ndarray, req: GenerateRequest, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else sampling from softmax(logits / temperature), optionally top-k."""
    if req.temperature == 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / req.temperature
    if req.top_k and req.top_k < scaled.size:
        cutoff = np.partition(scaled, -req.top_k)[-req.top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    return int(rng.choice(scaled.size, p=probs / probs.sum()))


async def tokens(model: LoadedModel, req: GenerateRequest, limits: GenerateLimits) -> AsyncIterator[int | str]:
    """Yield new token ids, then one finish reason (`stop`, `length` or `time_limit`)."""
    info = language_model_info(model)
    context, eot = int(info["max_seq_len"]), int(info.get("eot_id", 256))
    ids = list(req.prompt_ids) or [eot]  # an empty prompt starts a new document
    rng = np.random.default_rng(req.seed)
    deadline = time.monotonic() + limits.timeout
    loop = asyncio.get_running_loop()
    for _ in range(req.max_tokens):
        if time.monotonic() >= deadline:
            yield "time_limit"
            return
        window = np.asarray([ids[-context:]], dtype=np.int64)
        (logits,) = await loop.run_in_executor(None, model.session.run, ["logits"], {"input_ids": window})
        token = next_token(logits[0, -1], req, rng)
        if token == eot:
            yield "stop"
            return
        ids.append(token)
        yield token
    yield "length"


async def _events(model: LoadedModel, req: GenerateRequest, limits: GenerateLimits) -> AsyncIterator[dict]:
    from runtime.common.tokens import StreamDecoder

    decoder, count = StreamDecoder(), 0
    async for item in tokens(model, req, limits):
        if isinstance(item, str):
            tail = decoder.flush()
            if tail:
                yield {"text_output": tail}
            yield {
                "text_output": "",
                "finish_reason": item,
                "generated_tokens": count,
                "model_name": model.name,
                "model_version": model.version_str,
            }
            return
        count += 1
        piece = decoder.feed([item])
        if piece:
            yield {"text_output": piece}


class Generate:
    """The "generate" extension of the data plane, under `GenerateLimits`."""

    name = "generate"

    def __init__(self, limits: GenerateLimits):
        self.limits = limits

    @staticmethod
    def check(model: LoadedModel) -> dict:
        """The model's language_model section, or RequestError 400 when it is not a language model."""
        return language_model_info(model)

    def parse(self, body: bytes, stream: bool = False) -> GenerateRequest:
        """The request in `body` (`stream`: streaming unless it says otherwise); RequestError 400/413/422."""
        return parse_request(body, self.limits, stream)

    async def complete(self, model: LoadedModel, req: GenerateRequest) -> dict:
        """Generate to the end; the result object."""
        from runtime.common.tokens import decode

        new, reason = [], "length"
        async for item in tokens(model, req, self.limits):
            if isinstance(item, str):
                reason = item
            else:
                new.append(item)
        return {
            "model_name": model.name,
            "model_version": model.version_str,
            "text_output": decode(new),
            "finish_reason": reason,
            "prompt_tokens": len(req.prompt_ids),
            "generated_tokens": len(new),
        }

    def events(self, model: LoadedModel, req: GenerateRequest) -> AsyncIterator[dict]:
        """Event objects as text is decoded (`{"text_output": piece}`), then one with
        `finish_reason`; `aclose()` on the iterator stops generation."""
        return _events(model, req, self.limits)
