"""The serving data plane: what every protocol adapter shares, in one place.

The adapters (`runtime.serve.app`: HTTP/REST over ASGI; `runtime.serve.grpc_service`:
`inference.GRPCInferenceService` over grpc.aio) only translate their wire format to calls here
and the answers (or `RequestError`s) back; a new protocol is a new adapter over the same
`DataPlane`, with the same rules:

- authentication: `plane.auth` (`runtime.serve.auth.Authenticator`: the bearer token, one
  Authorization per request);
- model lookup and readiness: `model(name, version, current)` (404 unknown model or version,
  503 nothing loaded yet), `ready()` (false while draining), `model_ready(name, version)`; a request uses the version
  that was current when it started (`current`), so a hot reload never switches it mid-request;
- metadata: `server_metadata`, `model_metadata`, `model_config`;
- inference: `infer(model, body, header_length)` (the binary-extension form of the REST body:
  the size cap and tensor limits, the decoder, then the model on the loop or in a thread);
- limits: `body_reader()` (size cap, deadline, in-flight budget; released by the adapter once the
  response is sent);
- recording: `record(...)` (request metrics by route and code, one access-log line) and
  `metrics.reject(reason, client)` for refusals;
- extensions: protocol-neutral serving extensions keyed by name (`add_extension`,
  `extension(name)`), e.g. "generate" (`runtime.serve.generate.Generate`); each adapter maps its
  own routes or calls onto them, so the name a model's artifact gives for its serving extension
  is all an adapter needs to find it.

Event loop only (no locks): the counters, the body budget and the access-log buffer are plain
values. Hot path costs are measured in docs/benchmarks.md ("Serving"); keep calls here lean.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from runtime import __version__
from runtime.repository.artifact import DATATYPES
from runtime.serve.auth import Authenticator
from runtime.serve.body import BodyBudget, BodyReader, DecodePool, Sweep
from runtime.serve.metrics import AccessLog, Metrics
from runtime.serve.model import LoadedModel, ModelManager
from runtime.serve.protocol import InferRequest, Limits, RequestError

SERVER_NAME = "stratus"
SERVER_VERSION = __version__
PLATFORM = "onnxruntime_onnx"


class DataPlane:
    """One model name served from a ModelManager, behind one token, with one set of limits.

    Args:
        manager: provides `current` (LoadedModel or None); started and stopped by `start`/`stop`.
        auth: the token check shared by every adapter.
        metrics: the Prometheus metrics (requests, rejections, model events).
        limits: per-request tensor caps.
        max_body_bytes: cap on the (decompressed) request body.
        body_timeout: seconds allowed for a body that arrives in more than one piece.
        budget: the body bytes all requests together may hold (None: unbounded, tests only).
        decode_pool: decodes large JSON bodies off the event loop (None: on the loop).
        access_log: where to write one JSON line per request; None disables it.
        sweep: checks body deadlines (share the HTTP front's: one timer for both; None: its own).
    """

    def __init__(
        self,
        manager: ModelManager,
        auth: Authenticator,
        metrics: Metrics,
        *,
        limits: Limits,
        max_body_bytes: int,
        body_timeout: float = 30.0,
        budget: BodyBudget | None = None,
        decode_pool: DecodePool | None = None,
        access_log: AccessLog | None = None,
        sweep: Sweep | None = None,
    ):
        self.manager = manager
        self.auth = auth
        self.metrics = metrics
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.budget = budget or BodyBudget(1 << 62)
        self.decode_pool = decode_pool or DecodePool(None)
        self.access_log = access_log
        self.sweep = sweep or Sweep()
        self.extensions: dict[str, Any] = {}
        self.draining = False
        """Set on SIGTERM (`runtime.serve.drain`): the server is shutting down and is not ready."""
        self._observe = metrics.stats.observe  # Metrics.observe without its extra call
        # A request's body reader (size cap, deadline, budget; the adapter calls `release()` once
        # the response is sent): a C-level partial, not a method call per request.
        self.body_reader: Callable[[], BodyReader] = functools.partial(
            BodyReader, self.budget, max_body_bytes, body_timeout, self.sweep
        )

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.manager.start()
        self.decode_pool.start()

    async def stop(self) -> None:
        await self.manager.stop()
        self.decode_pool.stop()
        for extension in self.extensions.values():
            if hasattr(extension, "stop"):
                extension.stop()
        if self.access_log is not None:
            self.access_log.flush()

    # --- extensions -----------------------------------------------------------------------------

    def add_extension(self, name: str, extension: Any) -> None:
        """Serve `extension` under `name` (e.g. "generate"); adapters look it up by that name."""
        if name in self.extensions:
            raise ValueError(f"serving extension {name!r} is taken")
        self.extensions[name] = extension

    def extension(self, name: str) -> Any:
        """The extension registered as `name`, or RequestError 404 when this server has none."""
        extension = self.extensions.get(name)
        if extension is None:
            raise RequestError(404, f"this server has no {name[:32]!r} extension")
        return extension

    def model_extension(self, model: LoadedModel, name: str) -> Any:
        """The extension `name` for `model`: RequestError 404 when this server has none, 400 when
        the model's artifact names another one (its manifest's `serving_extension`, which the
        export takes from the model family). An artifact from before that field is left to the
        extension's own check."""
        extension = self.extension(name)
        manifest = model.manifest
        if "serving_extension" in manifest and manifest["serving_extension"] != name:
            declared = manifest["serving_extension"]
            why = f"serves the {declared!r} extension" if declared else "serves no extension"
            raise RequestError(
                400, f"model {model.name!r} version {model.version} {why}, not {name[:32]!r}; use /infer"
            )
        return extension

    # --- lookup and readiness -------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether a verified version is loaded and the server is not draining."""
        return self.manager.current is not None and not self.draining

    def model(self, name: str, version: str, current: LoadedModel | None) -> LoadedModel:
        """The model a request addresses (`version` "" for any), given the version `current` when
        it started; RequestError 404 (unknown name or version) or 503 (nothing loaded yet)."""
        served = self.manager.model
        if name != served:
            raise RequestError(404, f"unknown model {name[:64]!r}; this server serves {served!r}")
        if current is None:
            raise RequestError(503, f"model {served!r} is not loaded yet")
        if version and version != current.version_str:
            raise RequestError(404, f"version {version[:16]!r} is not served (serving {current.version})")
        return current

    def model_ready(self, name: str, version: str) -> bool:
        """Whether `name` (at `version`, "" for any) is served and loaded; never raises."""
        current = self.manager.current
        return current is not None and name == self.manager.model and version in ("", current.version_str)

    # --- metadata -------------------------------------------------------------------------------

    @staticmethod
    def server_metadata(extensions: list[str]) -> dict:
        """Server metadata; `extensions` are the protocol extensions of the adapter answering."""
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": extensions}

    @staticmethod
    def model_metadata(model: LoadedModel) -> dict:
        return {
            "name": model.name,
            "versions": [model.version_str],
            "platform": PLATFORM,
            "inputs": [s.to_json() for s in model.inputs.values()],
            "outputs": [s.to_json() for s in model.outputs.values()],
        }

    @staticmethod
    def model_config(model: LoadedModel) -> dict:
        """Triton's model configuration for `model` (what Triton clients read)."""

        def tensors(specs):
            return [
                {"name": s.name, "data_type": DATATYPES[s.datatype][1], "dims": list(s.shape)} for s in specs.values()
            ]

        return {
            "name": model.name,
            "platform": PLATFORM,
            "max_batch_size": 0,
            "input": tensors(model.inputs),
            "output": tensors(model.outputs),
        }

    # --- inference ------------------------------------------------------------------------------

    async def infer(self, model: LoadedModel, body: bytes, header_length: int | None) -> tuple[InferRequest, dict]:
        """Decode and check `body` (the REST form: JSON, or a JSON head of `header_length` bytes
        and raw tensors) against `model` and the limits, then run the model.

        The model runs on the event loop when it is fast enough (`LoadedModel.inline`), else in
        the default thread pool. Returns (the decoded request, output name -> array)."""
        req = await self.decode_pool.decode(body, header_length, model.inputs, model.outputs, self.limits)
        if model.inline:
            return req, model.run(req.inputs)
        return req, await asyncio.get_running_loop().run_in_executor(None, model.run, req.inputs)

    # --- recording ------------------------------------------------------------------------------

    def record(
        self, route: str, status: int, seconds: float, client: str, method: str, path: str, size: int, version: str
    ) -> None:
        """Count one answered request (any protocol) and write its access-log line."""
        self._observe(route, status, seconds)
        if self.access_log is not None:
            self.access_log.request(client, method, path, route, status, seconds, size, version)
