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
is left of the context, both within --generate-max-tokens), `temperature` (0-2, 0 greedy),
`top_p`, `top_k` (an extension, as vLLM's), `seed`, `stop` (a string or up to 4), `n` (1 only),
`stream`, `stream_options.include_usage`. Other sampling options that change the output
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
from dataclasses import dataclass

import orjson

from runtime.serve.app import Call, Response, Route, ServeApp
from runtime.serve.generate import Generate, backend_of, collect
from runtime.serve.generation import MAX_STOP_STRINGS, Backend, Finish, Relay, Sampling, merged
from runtime.serve.model import LoadedModel
from runtime.serve.protocol import RequestError

PREFIX = "/v1/"
ROLES = ("system", "developer", "user", "assistant", "tool")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default `max_tokens` for /v1/completions."""
OFFLOAD_PROMPT_CHARS = 4096
"""Prompts longer than this are tokenized in a worker thread, off the event loop."""
_REFUSED_OPTIONS = (
    "logprobs",
    "top_logprobs",
    "echo",
    "suffix",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
)
"""Options that would change the output and are not implemented: refused unless unset or off."""
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error", 429: "rate_limit_error"}


class OpenAIError(RequestError):
    """A request error with OpenAI's `param` (the field at fault) and `code`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(status, message)
        self.param = param
        self.code = code

    def __reduce__(self):
        return type(self), (self.status, self.message, self.param, self.code)


def error_body(e: RequestError) -> bytes:
    """OpenAI's error object for `e` (any RequestError; `param`/`code` when it has them)."""
    status = e.status
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    code = getattr(e, "code", None) or ("invalid_api_key" if status == 401 else None)
    return orjson.dumps(
        {"error": {"message": e.message, "type": kind, "param": getattr(e, "param", None), "code": code}}
    )


def _bad(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param, code)


# --- request parsing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The sampling options of one request, checked (the prompt is parsed by each route)."""

    max_tokens: int | None
    """Asked for (None: the route's default)."""
    max_tokens_param: str
    """Which field gave it (`max_tokens` or `max_completion_tokens`)."""
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def _number(data: dict, key: str, default: float, low: float, high: float, *, integer: bool = False):
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _bad(
            key, f"expected {'an integer' if integer else 'a number'}, got {type(value).__name__}", "invalid_type"
        )
    if not low <= value <= high:
        raise _bad(key, f"{value!r} is outside [{low:g}, {high:g}]")
    return value


def parse_options(data: dict, max_tokens_cap: int, chat: bool) -> Options:
    """Check the sampling options of a request body; OpenAIError 400 names the field."""
    for key in _REFUSED_OPTIONS:
        if data.get(key) not in (None, False, 0, [], {}, "none"):
            raise _bad(key, "not supported by this server; leave it unset", "unsupported_parameter")
    param = "max_completion_tokens" if chat and data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = data.get(param)
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise _bad(param, f"expected an integer, got {type(max_tokens).__name__}", "invalid_type")
        if max_tokens < 1:
            raise _bad(param, f"{max_tokens} is below the minimum of 1", "integer_below_min_value")
        if max_tokens > max_tokens_cap:
            raise _bad(
                param,
                f"{max_tokens} exceeds this server's cap of {max_tokens_cap} new tokens (--generate-max-tokens); "
                "ask for fewer",
                "integer_above_max_value",
            )
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise _bad("n", f"{n!r}: this server returns one choice per request; send n = 1 or leave it unset")
    stop = data.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _bad("stop", "expected a non-empty string or a list of them", "invalid_type")
    if len(stop) > MAX_STOP_STRINGS:
        raise _bad("stop", f"{len(stop)} stop strings; give at most {MAX_STOP_STRINGS}")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 63):
        raise _bad("seed", "expected a non-negative integer", "invalid_type")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", "expected true or false", "invalid_type")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise _bad("stream_options", "only allowed with stream: true")
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise _bad("stream_options", 'expected {"include_usage": true|false}', "invalid_type")
        include_usage = options.get("include_usage", False)
    return Options(
        max_tokens=max_tokens,
        max_tokens_param=param,
        temperature=float(_number(data, "temperature", 1.0, 0.0, 2.0)),
        top_p=float(_number(data, "top_p", 1.0, 0.0, 1.0)) or 1e-6,  # 0: only the most likely token
        top_k=int(_number(data, "top_k", 0, 0, 1 << 20, integer=True)),
        seed=seed,
        stop=tuple(stop),
        stream=stream,
        include_usage=include_usage,
    )


def parse_messages(messages) -> list[dict]:
    """Chat messages as `[{"role", "content": str}]`; OpenAIError 400 names the message at fault.

    Content may be a string or a list of text parts (`{"type": "text", "text": ...}`)."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", 'expected a non-empty list of {"role": ..., "content": ...}', "invalid_type")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, 'expected an object {"role": ..., "content": ...}', "invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(f"{where}.content[{j}]", 'only text parts {"type": "text", "text": ...} are supported')
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise _bad(f"{where}.content", "expected a string or a list of text parts", "invalid_type")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def parse_prompt(prompt) -> str:
    """The prompt of /v1/completions: a string, or a list holding one string."""
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt", "expected a string (one prompt per request)", "invalid_type")
    return prompt


# --- the routes ----------------------------------------------------------------------------------


class OpenAIRoutes:
    """The OpenAI routes over a ServeApp's data plane and its "generate" extension."""

    def __init__(self, app: ServeApp):
        self.app = app
        self.generate: Generate = app.plane.extension("generate")
        self._created: dict[int, int] = {}

    def _model(self, call: Call, name) -> tuple[LoadedModel, Backend]:
        if not isinstance(name, str) or not name:
            raise _bad("model", "expected the served model's name", "invalid_type")
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
            raise _bad(prompt_param, "the prompt is empty (no tokens); send some text")
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
        pieces, finish = await collect(relay)
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
        pieces, finish = await collect(relay)
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
