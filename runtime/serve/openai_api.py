"""The OpenAI-compatible adapter of the serving data plane: completions and chat completions.

Routes (mounted on the HTTP adapter, `runtime.serve.app`, by `mount`, on the same port and behind
the same bearer token as every route: an OpenAI client sends its API key as
`Authorization: Bearer`, so `OpenAI(base_url="http://HOST:PORT/v1", api_key=TOKEN)` works):

    GET  /v1/models                 -> {"object": "list", "data": [{"id", "object": "model", ...}]}
    GET  /v1/models/{model}         -> the model object
    POST /v1/completions            -> "text_completion" (or its chunks with "stream": true)
    POST /v1/chat/completions       -> "chat.completion" (or "chat.completion.chunk"s)

The model is the served model's repository name; `name:N` asks for version N, which must be the
one serving (404 otherwise). A request runs on the version serving when it started, through the
model's generation backend (`runtime.serve.generation`) and the "generate" extension's worker
threads and concurrency cap (`runtime.serve.generate.Generate.generations`); the routes exist
only when the data plane holds that extension, and answer only for models whose artifact names
it (`serving_extension`).

Parameters: `max_tokens` (chat also `max_completion_tokens`; default: completions 16, chat what
is left of the context, both within --generate-max-tokens), `temperature` (0-2; 0, and anything
below 1e-3, greedy), `top_p`, `top_k` (an extension, as vLLM's), `seed`, `stop` (a string or up
to 4), `n` (1 only), `stream`, `stream_options.include_usage`. Other sampling options that change the output
(`logprobs`, `echo`, `suffix`, `tools`, penalties, ...) are refused rather than ignored. A
prompt whose tokens and `max_tokens` exceed the model's context is refused
(`context_length_exceeded`), never truncated. `finish_reason`: `stop` (end-of-sequence token or
a stop string; the text ends before the stop string), `length` (max_tokens, or the server's time
cap --generate-timeout: OpenAI's API has no reason of its own for that).

Streams are server-sent events, one `data: <chunk JSON>` per decoded piece, then `data: [DONE]`;
with `stream_options.include_usage` every chunk has `"usage": null` and one last chunk with no
choices carries the usage. Errors have OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`, `param` naming the request field at fault (also for the 401 of a missing token and
for the limits of the data plane, whose `param` is null). Chat prompts are rendered with the
model's chat template (`language_model.chat_template` in its manifest); a model without one
answers 400 naming /v1/completions.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson

from runtime.serve.app import Call, Response, Route, ServeApp
from runtime.serve.generate import Generate, backend_of, collect
from runtime.serve.generation import Backend, Finish, Relay, Sampling, merged
from runtime.serve.model import LoadedModel
from runtime.serve.openai_schema import (
    OpenAIError,
    Options,
    bad,
    error_body,
    parse_messages,
    parse_options,
    parse_prompt,
)
from runtime.serve.protocol import RequestError
from runtime.serve.stream import until_disconnected

PREFIX = "/v1/"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default `max_tokens` for /v1/completions."""
OFFLOAD_PROMPT_CHARS = 4096
"""Prompts longer than this are tokenized in a worker thread, off the event loop."""
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class OpenAIRoutes:
    """The OpenAI routes over a ServeApp's data plane and its "generate" extension."""

    def __init__(self, app: ServeApp):
        self.app = app
        self.generate: Generate = app.plane.extension("generate")
        self._created: dict[int, int] = {}

    def _model(self, call: Call, name) -> tuple[LoadedModel, Backend]:
        if not isinstance(name, str) or not name:
            raise bad("model", "expected the served model's name", "invalid_type")
        base, _, version = name.partition(":")
        try:
            model = self.app.plane.model(base, version, call.model)
            self.app.plane.model_extension(model, "generate")
            return model, backend_of(model)
        except OpenAIError:
            raise
        except RequestError as e:
            code = "model_not_found" if e.status == 404 else None
            raise OpenAIError(e.status, e.message, "model", code) from None

    def _card(self, model: LoadedModel) -> dict:
        created = self._created.setdefault(model.version, int(time.time()))
        return {"id": model.name, "object": "model", "created": created, "owned_by": "stratus"}

    async def models(self, app: ServeApp, call: Call) -> Response:
        data = [self._card(call.model)] if call.model is not None else []
        return 200, orjson.dumps({"object": "list", "data": data}), _JSON

    async def model(self, app: ServeApp, call: Call) -> Response:
        model, _ = self._model(call, call.params["model"])
        return 200, orjson.dumps(self._card(model)), _JSON

    async def _body(self, call: Call) -> dict:
        raw = await self.app.read_body(call)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise OpenAIError(400, "the body is not JSON", None, "invalid_json") from None
        if not isinstance(data, dict):
            raise OpenAIError(400, "the body must be a JSON object", None, "invalid_json")
        return data

    async def _start(
        self, backend: Backend, text: str, options: Options, prompt_param: str, default_max: int | None
    ) -> tuple[Relay, int]:
        """Tokenize, fit to the context (400 `context_length_exceeded`), wait for a slot."""
        if len(text) > OFFLOAD_PROMPT_CHARS:
            prompt_ids = await asyncio.to_thread(backend.encode, text)
        else:
            prompt_ids = backend.encode(text)
        cap = self.generate.limits.max_tokens
        context = backend.max_seq_len
        num_prompt = len(prompt_ids)
        if not backend.slides and num_prompt == 0:
            raise bad(prompt_param, "the prompt is empty (no tokens); send some text")
        if not backend.slides and num_prompt >= context:
            raise OpenAIError(
                400,
                f"{prompt_param}: {num_prompt} tokens; this model's context is {context} tokens, and the prompt "
                "must leave room for at least one new token; shorten it (it is never truncated)",
                prompt_param,
                "context_length_exceeded",
            )
        max_tokens = options.max_tokens
        if max_tokens is None:
            room = cap if backend.slides else context - num_prompt
            max_tokens = min(default_max or cap, cap, room)
        elif not backend.slides and num_prompt + max_tokens > context:
            raise OpenAIError(
                400,
                f"{options.max_tokens_param}: the prompt has {num_prompt} tokens and {max_tokens} new ones "
                f"were asked for: {num_prompt + max_tokens}, over this model's context of {context} tokens; "
                f"ask for at most {context - num_prompt} or shorten the prompt",
                options.max_tokens_param,
                "context_length_exceeded",
            )
        sampling = Sampling(
            prompt_ids=tuple(prompt_ids),
            max_tokens=max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            seed=options.seed,
            stop=options.stop,
        )
        return await self.generate.generations.start(backend, sampling), num_prompt

    async def completions(self, app: ServeApp, call: Call) -> Response:
        data = await self._body(call)
        model, backend = self._model(call, data.get("model"))
        prompt = parse_prompt(data.get("prompt"))
        options = parse_options(data, self.generate.limits.max_tokens, chat=False)
        relay, _ = await self._start(backend, prompt, options, "prompt", COMPLETIONS_DEFAULT_MAX_TOKENS)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = model.name
        if options.stream:
            return 200, _stream(relay, head, options, chat=False), _SSE
        pieces, finish = await until_disconnected(call.receive, collect(relay), relay.aclose)
        choice = {"index": 0, "text": "".join(pieces), "logprobs": None, "finish_reason": _reason(finish)}
        return 200, orjson.dumps({**head, "choices": [choice], "usage": _usage(finish)}), _JSON

    async def chat_completions(self, app: ServeApp, call: Call) -> Response:
        data = await self._body(call)
        model, backend = self._model(call, data.get("model"))
        messages = parse_messages(data.get("messages"))
        if not backend.chat_template:
            raise OpenAIError(
                400,
                f"model {model.name!r} has no chat template; send a plain prompt to /v1/completions",
                "messages",
                "no_chat_template",
            )
        options = parse_options(data, self.generate.limits.max_tokens, chat=True)
        text = backend.render_chat(messages)
        relay, _ = await self._start(backend, text, options, "messages", None)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time())}
        head["model"] = model.name
        if options.stream:
            return 200, _stream(relay, {**head, "object": "chat.completion.chunk"}, options, chat=True), _SSE
        pieces, finish = await until_disconnected(call.receive, collect(relay), relay.aclose)
        message = {"role": "assistant", "content": "".join(pieces)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _reason(finish)}
        return 200, orjson.dumps({**head, "choices": [choice], "usage": _usage(finish)}), _JSON


def _reason(finish: Finish) -> str:
    return "length" if finish.reason == "time_limit" else finish.reason


def _usage(finish: Finish) -> dict:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    }


async def _stream(relay: Relay, head: dict, options: Options, chat: bool) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed (chat) completion; closing this stops the generation."""
    extra = {"usage": None} if options.include_usage else {}

    def chunk(choice: dict) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": [choice], **extra}) + b"\n\n"

    def piece(text: str, reason: str | None) -> dict:
        if chat:
            delta = {"content": text} if text or reason is None else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

    async with aclosing(relay):
        if chat:
            yield chunk(
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            )
        while items := await relay.batch():  # one write per batch of pieces
            text, finish = merged(items)
            out = [chunk(piece(text, None))] if text else []
            if finish is not None:
                out.append(chunk(piece("", _reason(finish))))
                if options.include_usage:
                    out.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": _usage(finish)}) + b"\n\n")
                out.append(b"data: [DONE]\n\n")
            if out:
                yield b"".join(out)


def mount(app: ServeApp) -> OpenAIRoutes | None:
    """Add the OpenAI routes to `app` when its data plane holds the "generate" extension (None
    otherwise), and answer errors under /v1/ in OpenAI's shape."""
    if "generate" not in app.plane.extensions:
        return None
    routes = OpenAIRoutes(app)
    app.add_route(Route("GET", "/v1/models", "openai_models"), routes.models)
    app.add_route(Route("GET", "/v1/models/{model}", "openai_model"), routes.model)
    app.add_route(Route("POST", "/v1/completions", "openai_completions"), routes.completions)
    app.add_route(Route("POST", "/v1/chat/completions", "openai_chat_completions"), routes.chat_completions)
    app.error_formats[PREFIX] = error_body
    return routes
