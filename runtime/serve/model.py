"""Loading, verifying, warming and hot-swapping model versions for `runtime.serve`.

Lifecycle of a version N (all off the event loop, in a worker thread):
fetch `<repo>/<model>/<N>/` into a private temp dir -> `verify_artifact` -> check the manifest's
io spec against the ONNX graph -> create the ONNX Runtime session -> warm-up at batch 1 and at
the batch cap -> atomic swap (one reference assignment). A language model also gets its
generation backend (`LoadedModel.generator`, `runtime.serve.generation`); an artifact of the
onnxruntime-genai runtime (`language_model.runtime`) gets only that: its `og.Model` is loaded
and warmed by `runtime.serve.genai.load` instead of an ONNX Runtime session, and its io spec is
not checked against the graph (whose inputs also hold the key/value cache). A request holds the `LoadedModel` it
started with, so in-flight requests finish on their version. A version that fails verification
is remembered and not retried (versions are immutable); other failures (network) are retried on
the next poll. Either way the old version keeps serving and the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from runtime.repository.artifact import ArtifactError, verify_artifact
from runtime.repository.store import PublishError, Repo
from runtime.serve import genai
from runtime.serve.generation import WindowedBackend
from runtime.serve.protocol import RequestError, TensorSpec

log = logging.getLogger("stratus.serve")

MODEL_FILE = "model.onnx"
_ORT_TYPES = {
    "BOOL": "tensor(bool)",
    "UINT8": "tensor(uint8)",
    "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)",
    "UINT64": "tensor(uint64)",
    "INT8": "tensor(int8)",
    "INT16": "tensor(int16)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "FP16": "tensor(float16)",
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
}
_RUN_OPTIONS = ort.RunOptions()
"""One RunOptions for every call (read-only during a run): without it ONNX Runtime's Python API
builds a default one per call, ~1 us hot and ~3 us with cold caches for this repository's MLP."""
INLINE_MAX_SECONDS = 0.002
"""A version whose warm-up at the batch cap takes less than this runs inference on the event loop
(a thread hop would cost more than the work); slower models run in a worker thread."""


@dataclass(frozen=True)
class LoadedModel:
    """One verified, warmed version; immutable, shared by the requests that use it."""

    name: str
    version: int
    session: ort.InferenceSession | None
    """The ONNX Runtime session (None for an onnxruntime-genai artifact: see `generator`)."""
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    manifest: dict
    inline: bool
    generator: Any = None
    """A language model's generation backend (`runtime.serve.generation.Backend`), else None."""

    @property
    def version_str(self) -> str:
        return str(self.version)

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise RequestError(
                400, f"model {self.name!r} version {self.version} is served for generation only; use /generate or /v1"
            )
        names = list(self.outputs)
        return dict(zip(names, self.session.run(names, arrays, _RUN_OPTIONS), strict=True))


def _specs(manifest: dict, key: str) -> dict[str, TensorSpec]:
    return {s["name"]: TensorSpec(s["name"], s["datatype"], tuple(s["shape"])) for s in manifest[key]}


def _check_graph(session: ort.InferenceSession, specs: dict[str, TensorSpec], graph_args, what: str) -> None:
    graph = {a.name: a for a in graph_args}
    if set(graph) != set(specs):
        raise ArtifactError(f"manifest {what} {sorted(specs)} do not match the ONNX graph's {sorted(graph)}")
    for name, spec in specs.items():
        arg = graph[name]
        if arg.type != _ORT_TYPES[spec.datatype] or len(arg.shape) != len(spec.shape):
            raise ArtifactError(
                f"manifest {what} {name!r} ({spec.datatype}, {list(spec.shape)}) does not match the ONNX "
                f"graph ({arg.type}, {arg.shape})"
            )


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """How the server runs a model: `intra_op_threads` threads, one inter-op thread, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_version(
    store: Repo,
    model: str,
    version: int,
    *,
    max_batch_size: int,
    intra_op_threads: int = 1,
    generate_batch: int = genai.MAX_BATCH,
) -> LoadedModel:
    """Fetch, verify, load and warm one version. Blocking; call it from a worker thread.

    `generate_batch`: requests an onnxruntime-genai model decodes in one step (the server passes
    its --generate-max-concurrency).

    Raises:
        ArtifactError: the version does not verify or does not fit its manifest.
        PublishError: the repository could not be read.
        Exception: ONNX Runtime failed to load or run the (verified) model.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"stratus-{model}-{version}-"))
    try:
        local = store.fetch_version(model, version, workdir / "v")
        manifest = verify_artifact(local)
        if MODEL_FILE not in manifest["files"] or not manifest.get("inputs") or not manifest.get("outputs"):
            raise ArtifactError(f"{local}: manifest needs {MODEL_FILE}, 'inputs' and 'outputs'")
        language_model = manifest.get("language_model")
        if isinstance(language_model, dict) and language_model.get("runtime") == genai.RUNTIME:
            backend = genai.load(local, manifest, intra_op_threads, generate_batch)
            log.info("loaded %s version %d (%s)", model, version, genai.RUNTIME)
            inputs, outputs = _specs(manifest, "inputs"), _specs(manifest, "outputs")
            return LoadedModel(model, version, None, inputs, outputs, manifest, inline=False, generator=backend)
        # ONNX and JSON only: the session reads protobuf, nothing is unpickled.
        session = ort.InferenceSession(
            str(local / MODEL_FILE), session_options(intra_op_threads), providers=["CPUExecutionProvider"]
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    inputs, outputs = _specs(manifest, "inputs"), _specs(manifest, "outputs")
    _check_graph(session, inputs, session.get_inputs(), "inputs")
    _check_graph(session, outputs, session.get_outputs(), "outputs")
    loaded = LoadedModel(model, version, session, inputs, outputs, manifest, inline=True)
    elapsed = 0.0
    for batch in (1, max_batch_size):
        feed = {
            n: np.zeros([batch if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(s.shape)], s.dtype)
            for n, s in inputs.items()
        }
        start = time.perf_counter()
        results = loaded.run(feed)
        elapsed = time.perf_counter() - start
        for name, spec in outputs.items():
            if results[name].dtype != spec.dtype.newbyteorder("="):
                raise ArtifactError(f"warm-up output {name!r} is {results[name].dtype}, manifest says {spec.datatype}")
    inline = elapsed < INLINE_MAX_SECONDS
    log.info("loaded %s version %d (warm-up at batch %d: %.2f ms)", model, version, max_batch_size, elapsed * 1e3)
    generator = None
    if isinstance(language_model, dict) and "max_seq_len" in language_model:
        generator = WindowedBackend(session, language_model)
    return LoadedModel(model, version, session, inputs, outputs, manifest, inline=inline, generator=generator)


class ModelManager:
    """Holds the current version and polls the repository's LATEST for a new one.

    Args:
        store: the model repository.
        model: the model name in it.
        poll_interval: seconds between LATEST reads.
        max_batch_size: batch used for the second warm-up run (the request cap).
        on_event: callback(event, **fields) for metrics: "loaded", "reload_failed".
    """

    def __init__(
        self,
        store: Repo,
        model: str,
        *,
        poll_interval: float,
        max_batch_size: int,
        intra_op_threads: int = 1,
        generate_batch: int = genai.MAX_BATCH,
        on_event: Callable[..., None] = lambda event, **fields: None,
    ):
        self.store = store
        self.model = model
        self.poll_interval = poll_interval
        self.max_batch_size = max_batch_size
        self.intra_op_threads = intra_op_threads
        self.generate_batch = generate_batch
        self.on_event = on_event
        self.current: LoadedModel | None = None
        self.rejected: set[int] = set()
        self._task: asyncio.Task | None = None

    async def poll_once(self) -> None:
        """Read LATEST; if it names a new, not-rejected version, load it and swap it in."""
        try:
            latest = await asyncio.to_thread(self.store.read_latest, self.model)
        except (PublishError, OSError) as e:
            log.warning("reading LATEST of %s failed: %s", self.model, e)
            self.on_event("reload_failed", version=None, reason="latest")
            return
        except Exception as e:  # may carry what the file holds: log its type only
            log.warning("reading LATEST of %s failed (%s)", self.model, type(e).__name__)
            self.on_event("reload_failed", version=None, reason="latest")
            return
        if latest is None or latest in self.rejected:
            return
        if self.current is not None and latest == self.current.version:
            return
        try:
            loaded = await asyncio.to_thread(
                load_version,
                self.store,
                self.model,
                latest,
                max_batch_size=self.max_batch_size,
                intra_op_threads=self.intra_op_threads,
                generate_batch=self.generate_batch,
            )
        except ArtifactError as e:
            self.rejected.add(latest)
            log.error("rejected %s version %d: %s; still serving %s", self.model, latest, e, self._serving())
            self.on_event("reload_failed", version=latest, reason="verification")
            return
        except Exception as e:  # network, ONNX Runtime: keep serving, retry on the next poll
            log.error("loading %s version %d failed: %s; still serving %s", self.model, latest, e, self._serving())
            self.on_event("reload_failed", version=latest, reason="load")
            return
        previous, self.current = self.current, loaded
        log.info("now serving %s version %d (was %s)", self.model, loaded.version, previous and previous.version)
        self.on_event("loaded", version=loaded.version)

    def _serving(self) -> str:
        return f"version {self.current.version}" if self.current else "nothing (not ready)"

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as e:  # a poller that died would leave the server on this version for good
                log.error("polling %s failed (%s); polling again", self.model, type(e).__name__)
                self.on_event("reload_failed", version=None, reason="poll")
            await asyncio.sleep(self.poll_interval)

    def start(self) -> None:
        """Start polling in the background (first poll immediately)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
