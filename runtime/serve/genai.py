"""The onnxruntime-genai generation backend: a key/value cache, the model's tokenizer and chat template.

Serves artifacts whose manifest says `language_model.runtime: "onnxruntime-genai"`: a version
directory as the library's model builder writes it (`model.onnx` + `model.onnx.data`,
`genai_config.json`, the tokenizer files, `chat_template.jinja` where the model has one). The
`og.Model` and `og.Tokenizer` are loaded once per version (`load`) and shared by its requests.

Requests are batched: one `og.Engine` per version (the library's scheduler) decodes every
running request in one forward pass per step, up to `--generate-max-concurrency` at a time.
One thread per version (`EngineLoop`) owns the engine: it adds new requests, runs the steps and
hands each token to its request's queue, where the request's worker thread
(`runtime.serve.generation`) decodes it to text. `Engine.run` computes without the interpreter
lock, so the event loop, health checks and other requests go on during a step. A request with
a `seed` (reproducible sampling) runs on its own `og.Generator` instead: the library's engine
has no per-request seed unless its paged cache is built, and a generator's steps hold the
interpreter lock while they compute.

The graph runs with the execution provider its `genai_config.json` names, with the server's
`--intra-op-threads` for the one batched step at a time; on a GPU serving host the CUDA build of
the same package is installed and the config names the CUDA provider.

The manifest's `inputs`/`outputs` (`input_ids` -> `logits`) describe the model to clients; they
are not checked against the graph, whose inputs also hold the cache.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runtime.repository.artifact import ArtifactError
from runtime.serve.generation import Sampling
from runtime.serve.protocol import RequestError

log = logging.getLogger("stratus.serve")

RUNTIME = "onnxruntime-genai"
"""`language_model.runtime` of the artifacts this backend serves."""
CONFIG_FILE = "genai_config.json"
MAX_BATCH = 4
"""Requests one engine step decodes together by default (the static engine's batch); more wait
their turn. The server passes its `--generate-max-concurrency`. The key/value cache grows with
the tokens each request holds, not with this number."""

_EOS = object()
"""Queue item: the request ended on an end-of-sequence token."""
_END = object()
"""Queue item: the request ended otherwise (its token budget or a cancel)."""


class EngineLoop:
    """The thread that owns one `og.Engine`: requests in, tokens out to each request's queue.

    Everything that touches the engine or its requests runs on this thread (the library's
    requests may not change while a step runs). It holds no reference to the backend, so a
    version nobody serves any more is collected and its loop stopped (`close`, by a finalizer)."""

    def __init__(self, og, model, max_batch: int = MAX_BATCH):
        self._og = og
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._token = int(og.EngineEventFlags.TOKEN)
        self._finished = int(og.EngineEventFlags.TURN_FINISHED)
        self._failed = int(og.EngineEventFlags.FAILED)
        self.steps = 0
        """Engine steps run so far."""
        self.peak_batch = 0
        """Most requests one step has decoded together."""
        self._running: dict = {}  # og.Request -> its queue; changed on the loop's thread only
        started: queue.SimpleQueue = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._run, args=(model, 4 * max_batch, started), name="stratus-genai-engine", daemon=True
        )
        thread.start()
        problem = started.get()  # the library wants its engine made on the thread that drives it
        if problem is not None:
            raise problem

    def submit(self, prompt_ids, sampling: dict, max_tokens: int, min_tokens: int = 0) -> queue.SimpleQueue:
        """Queue a request; its token ids arrive on the returned queue, then `_EOS` or `_END`
        (or an exception). `sampling`: temperature, top_p, top_k (0: no limit)."""
        out: queue.SimpleQueue = queue.SimpleQueue()
        self._inbox.put(("add", out, (np.asarray(prompt_ids, dtype=np.int32), sampling, max_tokens, min_tokens)))
        return out

    def cancel(self, out: queue.SimpleQueue) -> None:
        """Stop the request that writes to `out` (nothing if it already ended)."""
        self._inbox.put(("cancel", out, None))

    def close(self) -> None:
        self._inbox.put(("close", None, None))

    @property
    def running(self) -> int:
        """Requests in the engine now (waiting for a place in the batch or decoding)."""
        return len(self._running)

    def _add(self, out, args) -> object:
        prompt, sampling, max_tokens, min_tokens = args
        request = self._engine.create_request()
        options = self._og.TurnOptions(request)
        options.set_max_generated_tokens(max_tokens)
        if min_tokens:
            options.set_min_generated_tokens(min_tokens)
        temperature = sampling.get("temperature", 0.0)
        options.set_do_sample(temperature > 0)
        if temperature > 0:
            options.set_temperature(temperature)
            options.set_top_p(sampling.get("top_p", 1.0))
            options.set_top_k(sampling.get("top_k", 0))  # 0: no limit
        request.begin_turn(prompt, options)
        return request

    def _take(self, *, block: bool):
        """The next message of the inbox (waiting for one if `block`), or None."""
        try:
            return self._inbox.get(block=block)
        except queue.Empty:
            return None

    def _handle(self, message) -> bool:
        """Apply one message; False once the loop is to stop."""
        op, out, args = message
        running = self._running
        if op == "close":
            for request, waiting in running.items():
                request.close()
                waiting.put(_END)
            return False
        if op == "add":
            try:
                running[self._add(out, args)] = out
            except Exception as e:  # a request the engine refuses fails alone
                out.put(e)
            return True
        # cancel: a request that already ended is not running any more
        for request in [r for r, waiting in running.items() if waiting is out]:
            request.close()
            del running[request]
            out.put(_END)
        return True

    def _run(self, model, capacity: int, started: queue.SimpleQueue) -> None:
        try:
            self._engine = self._og.Engine(model)
            self._events = self._engine.create_event_buffer(capacity)
        except Exception as e:
            started.put(e)
            return
        started.put(None)
        running = self._running
        while True:
            # wait for work when idle; otherwise take what came in since the last step
            message = self._take(block=not running)
            while message is not None:
                if not self._handle(message):
                    return
                message = self._take(block=False)
            if not running:
                continue
            self.steps += 1
            self.peak_batch = max(self.peak_batch, len(running))
            try:
                events = list(self._engine.run(self._events))
            except Exception as e:  # the step failed: every request in it fails with the cause
                log.error("generation step failed: %s", e)
                for request, waiting in running.items():
                    request.close()
                    waiting.put(RuntimeError(f"generation failed: {e}"))
                running.clear()
                continue
            for event in events:
                request = event.request
                out = running.get(request)
                if out is None:
                    continue
                flags = int(event.flags)
                if flags & self._token:
                    out.put(int(event.token))
                if flags & self._failed:
                    out.put(RuntimeError(f"generation failed ({event.error_code.name})"))
                elif flags & self._finished:
                    eos = event.finish_reason == self._og.FinishReason.EOS
                    out.put(_EOS if eos else _END)
                else:
                    continue
                request.close()
                del running[request]


class GenaiBackend:
    """One loaded version: `og.Model` + `og.Tokenizer` + an `EngineLoop`; `tokens` runs a request."""

    slides = False

    def __init__(self, version_dir: Path, info: dict, intra_op_threads: int = 1, max_batch: int = MAX_BATCH):
        import onnxruntime_genai as og

        self._og = og
        config = og.Config(str(version_dir))
        threads = {"intra_op_num_threads": intra_op_threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": threads}}}))
        # the engine decodes one sequence per request and takes its minimum length per request
        config.overlay(json.dumps({"search": {"num_beams": 1, "min_length": 0}}))
        config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": max_batch}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.engine = EngineLoop(og, self.model, max_batch)
        weakref.finalize(self, self.engine.close)
        self.max_seq_len = int(info["max_seq_len"])
        self.chat_template = bool(info.get("chat_template", False))
        self.vocab_size = int(
            info.get("vocab_size") or json.loads((version_dir / CONFIG_FILE).read_text())["model"]["vocab_size"]
        )
        self.eos = frozenset(int(t) for t in info.get("eos_token_ids", ())) or frozenset(
            int(t) for t in self.tokenizer.eos_token_ids
        )

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def render_chat(self, messages: list[dict]) -> str:
        try:
            return self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        except RuntimeError as e:  # the template itself failed (e.g. it refuses a role order)
            raise RequestError(400, f"the model's chat template refused these messages: {e}") from None

    def tokens(self, req: Sampling) -> Iterator[tuple[int, str, bool]]:
        if req.seed is not None and req.temperature > 0:
            yield from self._seeded(req)
            return
        sampling = {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k}
        yield from self.engine_tokens(req.prompt_ids, sampling, req.max_tokens)

    def engine_tokens(
        self, prompt_ids, sampling: dict, max_tokens: int, min_tokens: int = 0
    ) -> Iterator[tuple[int, str, bool]]:
        """A request on the batching engine, as `tokens` yields them (closing the iterator cancels it)."""
        out = self.engine.submit(prompt_ids, sampling, max_tokens, min_tokens)
        stream = self.tokenizer.create_stream()
        ended = False  # the engine let go of the request by itself
        try:
            while True:
                item = out.get()
                ended = item is _END or item is _EOS or isinstance(item, BaseException)
                if isinstance(item, BaseException):
                    raise item
                if item is _END:
                    return
                if item is _EOS or item in self.eos:  # an end token by id: the engine may go on
                    yield 0, "", True
                    return
                yield 1, stream.decode(item), False
        finally:
            if not ended:  # the consumer stopped first: free the request's place in the batch
                self.engine.cancel(out)

    def _seeded(self, req: Sampling) -> Iterator[tuple[int, str, bool]]:
        """Seeded sampling on its own `og.Generator`: the same seed gives the same text."""
        og = self._og
        params = og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=len(req.prompt_ids) + req.max_tokens,
            do_sample=True,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k or self.vocab_size,  # the generator's top_k 0 is not "no limit"
            random_seed=req.seed % (1 << 31),  # the library takes a 32-bit int
        )
        generator = og.Generator(self.model, params)
        generator.append_tokens(list(req.prompt_ids))
        stream = self.tokenizer.create_stream()
        for _ in range(req.max_tokens):
            if generator.is_done():
                break
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self.eos:
                yield 0, "", True
                return
            yield 1, stream.decode(token), False


def load(version_dir: Path, manifest: dict, intra_op_threads: int = 1, max_batch: int = MAX_BATCH) -> GenaiBackend:
    """Load a verified genai version directory and warm it up (a two-token greedy generation).

    Raises:
        ArtifactError: the manifest's `language_model` section or the genai config is missing or
            malformed.
    """
    info = manifest.get("language_model")
    if not isinstance(info, dict) or not isinstance(info.get("max_seq_len"), int) or info["max_seq_len"] < 2:
        raise ArtifactError("manifest.json: language_model needs an integer 'max_seq_len' >= 2; re-export the model")
    if CONFIG_FILE not in manifest["files"]:
        raise ArtifactError(f"{CONFIG_FILE}: missing from the manifest of an {RUNTIME} artifact; re-export the model")
    backend = GenaiBackend(version_dir, info, intra_op_threads, max_batch)
    warm = Sampling(prompt_ids=tuple(backend.encode("warm-up")) or (0,), max_tokens=2)
    for _ in backend.tokens(warm):
        pass
    return backend
