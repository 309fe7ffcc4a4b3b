"""Text generation behind one interface, for every route that generates (`/generate`, `/v1/...`).

A served language model carries a `Backend` (`LoadedModel.generator`), chosen at load time from
its manifest's `language_model.runtime`:

- `"onnxruntime-genai"` (`runtime.serve.genai.GenaiBackend`): the model builder's graph with a
  key/value cache, the model's own tokenizer and chat template; concurrent requests are decoded
  together by the library's batching engine (one thread per version drives it).
- otherwise (`WindowedBackend` here): the byte-level `gpt` family's `input_ids -> logits` graph,
  run once per new token on the last `max_seq_len` tokens (no cache: small models, CPU).

A backend turns a `Sampling` request into a blocking iterator of `Piece`s and one `Finish`
(`backend.steps(...)`), run to the end in a worker thread. `Generations` owns those threads: at
most `--generate-max-concurrency` generations run at once; a request over the cap waits up to
`--generate-queue-timeout` seconds for a slot, then is refused (503, `Retry-After`, naming the
flag). `Relay` hands the pieces to the event loop as they come, so the loop (health checks,
other requests) never waits for a generation to finish; closing the relay (a client that went
away) stops the generator at its next token. The genai engine computes its steps without the
interpreter lock, so the loop goes on during a step too.

Everything about a generation that is the same for every backend is here: the deadline
(`finish_reason` `time_limit`), stop strings (the text is cut before the first match, which is
held back until it can no longer be the start of one; `finish_reason` `stop`), the token count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from runtime.serve.body import Refused

MAX_STOP_STRINGS = 4
"""Most stop strings one request may give (OpenAI's cap)."""
MIN_TEMPERATURE = 1e-3
"""A positive temperature below this decodes greedily, as 0 does: logits divided by a temperature
such as 5e-324 overflow to infinity (no distribution left to sample), and below ~1e-3 sampling
already picks the most likely token except for near-ties."""


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """One generation request, already checked against the model and the server's caps."""

    prompt_ids: tuple[int, ...]
    """The prompt's token ids (the backend's tokenizer)."""
    max_tokens: int
    """New tokens at most; then `finish_reason` `length`."""
    temperature: float = 0.0
    """0 is greedy decoding; otherwise sampling from softmax(logits / temperature) (below
    MIN_TEMPERATURE: greedy, see `Generations.start`)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens whose probabilities add up to this (1: all)."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: no limit)."""
    seed: int | None = None
    """Seed of the sampler (None: a fresh one per request)."""
    stop: tuple[str, ...] = ()
    """Stop strings: the text ends before the first one generated (`finish_reason` `stop`)."""


@dataclass(frozen=True)
class Piece:
    """Decoded text of one or more new tokens."""

    text: str


@dataclass(frozen=True)
class Finish:
    """The end of a generation."""

    reason: str
    """`stop` (end-of-sequence token or a stop string), `length` (max_tokens) or `time_limit`."""
    prompt_tokens: int
    """Tokens of the prompt."""
    completion_tokens: int
    """New tokens generated (a stop string's tokens included; the end-of-sequence token not)."""


class Backend(Protocol):
    """What a served language model offers the generation routes."""

    max_seq_len: int
    """Context length: prompt and new tokens together may not exceed it (windowed models slide)."""
    slides: bool
    """Whether generation may run past `max_seq_len` by dropping the oldest tokens."""
    chat_template: bool
    """Whether `render_chat` works (the model ships a chat template)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""

    def render_chat(self, messages: list[dict]) -> str:
        """The prompt text of chat `messages` (`[{"role", "content"}]`) through the chat template,
        ending with the assistant's turn."""

    def tokens(self, req: Sampling) -> Iterator[tuple[int, str, bool]]:
        """Blocking: (new tokens, their decoded text, end-of-sequence) as the model generates:
        (1, text, False) per new token, and (0, text, True) for the end-of-sequence token (the
        iterator ends after it); (0, text, False) carries text decoded without a new token (a
        decoder's tail). Ends by itself after `req.max_tokens` new tokens."""


def steps(backend: Backend, req: Sampling, deadline: float, cancelled: threading.Event) -> Iterator[Piece | Finish]:
    """Blocking: the pieces of text of one generation, then its `Finish`.

    Applies what is common to all backends: the deadline (`time.monotonic()` clock), the stop
    strings, the token count, and `cancelled` (checked before each token; then nothing more is
    yielded)."""
    hold = max((len(s) for s in req.stop), default=1) - 1
    pending, count = "", 0
    reason = "length"
    tokens = backend.tokens(req)
    try:
        while True:
            if cancelled.is_set():
                return
            if time.monotonic() >= deadline:
                reason = "time_limit"
                break
            step = next(tokens, None)
            if step is None:
                break
            num_new, text, eos = step
            count += num_new
            if eos:
                reason = "stop"
            if not req.stop:
                if text:
                    yield Piece(text)
                if eos:
                    break
                continue
            pending += text
            cut = min((i for i in (pending.find(s) for s in req.stop) if i >= 0), default=-1)
            if cut >= 0:
                pending, reason = pending[:cut], "stop"
                break
            if len(pending) > hold:
                yield Piece(pending[: len(pending) - hold])
                pending = pending[len(pending) - hold :]
            if eos:
                break
    finally:
        tokens.close()
    if pending:
        yield Piece(pending)
    yield Finish(reason, len(req.prompt_ids), count)


_END = object()


class Relay:
    """Async iterator over one generation, run to the end in a worker thread (`steps`).

    The thread starts at once, so the generation slot it holds is given back when the thread
    ends even if nobody reads the relay (a response that failed before its first byte);
    `aclose()` stops it at its next token. Items cross to the event loop in batches: the loop is
    woken once for everything produced since it last looked (`batch()`), so a busy loop does less
    work per token, not more."""

    def __init__(self, pool: ThreadPoolExecutor, work: Callable[[threading.Event], Iterator], release: Callable):
        self._work = work
        self._release = release
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._pending: list = []
        self._ready = asyncio.Event()
        self._ended = False
        self._unread: list = []
        self._loop = asyncio.get_running_loop()
        self._loop.run_in_executor(pool, self._run)

    def _push(self, item) -> None:  # worker thread
        with self._lock:
            self._pending.append(item)
            wake = len(self._pending) == 1
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)

    def _run(self) -> None:
        try:
            for item in self._work(self._cancelled):
                self._push(item)
        except BaseException as e:  # handed to the awaiting side, raised there
            self._push(e)
        finally:
            self._push(_END)
            self._loop.call_soon_threadsafe(self._release)

    async def batch(self) -> list[Piece | Finish]:
        """Every item produced since the last call: at least one, or [] once the generation
        ended. An error of the worker is raised here."""
        while not self._ended:
            self._ready.clear()  # before taking: a push after this wakes the wait below
            with self._lock:
                items, self._pending = self._pending, []
            if not items:
                await self._ready.wait()
                continue
            out = []
            for item in items:
                if item is _END:
                    self._ended = True
                    break
                if isinstance(item, BaseException):
                    self._ended = True
                    raise item
                out.append(item)
            if out:
                return out
        return []

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> Piece | Finish:
        if not self._unread:
            self._unread = (await self.batch())[::-1]
            if not self._unread:
                raise StopAsyncIteration
        return self._unread.pop()

    async def aclose(self) -> None:
        self._cancelled.set()


def merged(items: list[Piece | Finish]) -> tuple[str, Finish | None]:
    """The text of a batch's pieces and its finish (None while the generation goes on)."""
    text = "".join(item.text for item in items if isinstance(item, Piece))
    finish = items[-1] if isinstance(items[-1], Finish) else None
    return text, finish


@dataclass(frozen=True)
class GenerationLimits:
    """The server's caps on generation (`stratus serve --generate-*`)."""

    max_tokens: int = 256
    """Most new tokens one request may ask for (more is refused, naming the cap)."""
    timeout: float = 30.0
    """Seconds one request may generate for; then it ends with finish_reason `time_limit`."""
    max_concurrency: int = 4
    """Generations running at once, each in its own worker thread."""
    queue_timeout: float = 10.0
    """Seconds a request waits for a free generation slot before 503."""


class Generations:
    """The worker threads and the concurrency cap shared by every generating route."""

    def __init__(self, limits: GenerationLimits):
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        self._pool = ThreadPoolExecutor(limits.max_concurrency, thread_name_prefix="stratus-generate")

    async def start(self, backend: Backend, req: Sampling) -> Relay:
        """A relay over a new generation once a slot is free (a temperature below MIN_TEMPERATURE
        decodes greedily).

        Raises:
            Refused: 503 (with Retry-After) when no slot frees up within the queue timeout.
        """
        limits = self.limits
        try:
            await asyncio.wait_for(self._slots.acquire(), limits.queue_timeout)
        except TimeoutError:
            raise Refused(
                503,
                f"all {limits.max_concurrency} generation slots are busy (--generate-max-concurrency) and none "
                f"freed up within {limits.queue_timeout:g} s; retry later",
                "generate_busy",
                retry_after=True,
            ) from None
        if 0.0 < req.temperature < MIN_TEMPERATURE:
            req = dataclasses.replace(req, temperature=0.0)
        deadline = time.monotonic() + limits.timeout
        return Relay(self._pool, lambda cancelled: steps(backend, req, deadline, cancelled), self._slots.release)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- the windowed backend: the byte-level gpt family's logits graph -----------------------------


def next_token(logits: np.ndarray, req: Sampling, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else sampling from softmax(logits / temperature), optionally
    restricted to the top-k tokens and to the top-p probability mass."""
    if req.temperature == 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / req.temperature
    if req.top_k and req.top_k < scaled.size:
        cutoff = np.partition(scaled, -req.top_k)[-req.top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if req.top_p < 1.0:
        order = np.argsort(-probs)
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), req.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(scaled.size, p=probs))


class WindowedBackend:
    """The byte-level `gpt` family: `input_ids -> logits` on the last `max_seq_len` tokens, once
    per new token (no key/value cache), bytes as tokens (`runtime.common.tokens`)."""

    slides = True
    chat_template = False

    def __init__(self, session, info: dict):
        self.session = session
        self.max_seq_len = int(info["max_seq_len"])
        self.eot = int(info.get("eot_id", 256))

    def encode(self, text: str) -> list[int]:
        from runtime.common.tokens import encode

        return encode(text)

    def render_chat(self, messages: list[dict]) -> str:
        raise AssertionError("callers check chat_template first")

    def tokens(self, req: Sampling) -> Iterator[tuple[int, str, bool]]:
        from runtime.common.tokens import StreamDecoder

        ids = list(req.prompt_ids) or [self.eot]  # an empty prompt starts a new document
        rng = np.random.default_rng(req.seed)
        decoder, eos = StreamDecoder(), False
        for _ in range(req.max_tokens):
            window = np.asarray([ids[-self.max_seq_len :]], dtype=np.int64)
            (logits,) = self.session.run(["logits"], {"input_ids": window})
            token = next_token(logits[0, -1], req, rng)
            if token == self.eot:
                eos = True
                break
            ids.append(token)
            yield 1, decoder.feed([token]), False
        yield 0, decoder.flush(), eos
