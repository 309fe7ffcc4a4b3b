"""Requests and errors of the OpenAI-compatible adapter (`runtime.serve.openai_api`): the body's
fields checked into `Options`, chat `messages` and completion prompts, and OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}` with `param` naming the field at fault.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from runtime.serve.generation import MAX_STOP_STRINGS
from runtime.serve.protocol import RequestError

ROLES = ("system", "developer", "user", "assistant", "tool")
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


def bad(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
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
        raise bad(
            key, f"expected {'an integer' if integer else 'a number'}, got {type(value).__name__}", "invalid_type"
        )
    if not low <= value <= high:
        raise bad(key, f"{value!r} is outside [{low:g}, {high:g}]")
    return value


def parse_options(data: dict, max_tokens_cap: int, chat: bool) -> Options:
    """Check the sampling options of a request body; OpenAIError 400 names the field."""
    for key in _REFUSED_OPTIONS:
        if data.get(key) not in (None, False, 0, [], {}, "none"):
            raise bad(key, "not supported by this server; leave it unset", "unsupported_parameter")
    param = "max_completion_tokens" if chat and data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = data.get(param)
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise bad(param, f"expected an integer, got {type(max_tokens).__name__}", "invalid_type")
        if max_tokens < 1:
            raise bad(param, f"{max_tokens} is below the minimum of 1", "integer_below_min_value")
        if max_tokens > max_tokens_cap:
            raise bad(
                param,
                f"{max_tokens} exceeds this server's cap of {max_tokens_cap} new tokens (--generate-max-tokens); "
                "ask for fewer",
                "integer_above_max_value",
            )
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise bad("n", f"{n!r}: this server returns one choice per request; send n = 1 or leave it unset")
    stop = data.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise bad("stop", "expected a non-empty string or a list of them", "invalid_type")
    if len(stop) > MAX_STOP_STRINGS:
        raise bad("stop", f"{len(stop)} stop strings; give at most {MAX_STOP_STRINGS}")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 63):
        raise bad("seed", "expected a non-negative integer", "invalid_type")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad("stream", "expected true or false", "invalid_type")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad("stream_options", "only allowed with stream: true")
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise bad("stream_options", 'expected {"include_usage": true|false}', "invalid_type")
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
        raise bad("messages", 'expected a non-empty list of {"role": ..., "content": ...}', "invalid_type")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(where, 'expected an object {"role": ..., "content": ...}', "invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f"{where}.content[{j}]", 'only text parts {"type": "text", "text": ...} are supported')
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad(f"{where}.content", "expected a string or a list of text parts", "invalid_type")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def parse_prompt(prompt) -> str:
    """The prompt of /v1/completions: a string, or a list holding one string."""
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("prompt", "expected a string (one prompt per request)", "invalid_type")
    return prompt


# --- the routes ----------------------------------------------------------------------------------
