"""The ASGI application of `runtime.serve`: routing, default-deny auth, metrics, logs.

A plain ASGI callable (no framework): the protocol handling is small and this keeps per-request
overhead low (see docs/benchmarks.md, "Serving"). It runs behind the HTTP front
(`runtime.serve.front`, uvicorn + httptools + uvloop), which bounds connections and request heads
before anything here runs; bodies are bounded by `runtime.serve.body`.

Security model: the route table (`ROUTES` plus routes added with `ServeApp.add_route`) is the
whole surface; only routes marked `public` (liveness) skip the bearer check, and the check runs
before routing, so unknown paths also answer 401 without a valid token. A request with more than
one Authorization header is refused (400) rather than picking one. Tokens are compared as sha256
digests with `hmac.compare_digest` (constant time, no length leak). HEAD is answered wherever GET
is (same status and headers, no body).

Extension routes: `app.add_route(Route("POST", "/v2/models/{model}/generate", "generate"), handler)`
with `async def handler(app, call) -> (status, body, headers)` (`body` bytes, or an async
iterator of byte chunks that is streamed, e.g. server-sent events: `runtime.serve.generate`);
`call.model` is the version the request started with (None before the first load),
`await app.read_body(call)` reads the body within the size cap, deadline and in-flight budget,
and `RequestError` becomes a JSON error.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime import __version__
from runtime.repository.artifact import DATATYPES
from runtime.serve.body import BodyBudget, BodyReader, DecodePool, Disconnected, Refused, Sweep
from runtime.serve.metrics import AccessLog, Metrics
from runtime.serve.model import LoadedModel, ModelManager
from runtime.serve.protocol import Limits, RequestError, encode_infer_response
from runtime.serve.stream import send_stream

log = logging.getLogger("stratus.serve")

SERVER_NAME = "stratus"
SERVER_VERSION = __version__


@dataclass(frozen=True)
class Route:
    """One entry of the route table; `{model}`/`{version}` match one path segment."""

    method: str
    path: str
    name: str
    public: bool = False

    @property
    def segments(self) -> tuple[str, ...]:
        return _segments(self.path)


@functools.cache
def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/"))


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v2/health/live", "live", public=True),
    Route("GET", "/v2/health/ready", "ready"),
    Route("GET", "/v2", "server_metadata"),
    Route("GET", "/v2/models/{model}", "model_metadata"),
    Route("GET", "/v2/models/{model}/versions/{version}", "model_metadata"),
    Route("GET", "/v2/models/{model}/ready", "model_ready"),
    Route("GET", "/v2/models/{model}/versions/{version}/ready", "model_ready"),
    Route("GET", "/v2/models/{model}/config", "model_config"),
    Route("POST", "/v2/models/{model}/infer", "infer"),
    Route("POST", "/v2/models/{model}/versions/{version}/infer", "infer"),
    Route("GET", "/metrics", "metrics"),
)


def match_route(routes: tuple[Route, ...], method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """Return (route, path params, path_exists). `path_exists` with no route means 405.

    HEAD matches the GET route of the path. ServeApp caches the answers per route table (a
    bounded LRU keyed by method and path only: hashing the table on every request would cost more
    than the lookup); callers must not mutate the returned params."""
    if method == "HEAD":
        method = "GET"
    parts = tuple(path.strip("/").split("/"))
    path_exists = False
    for route in routes:
        segs = route.segments
        if len(segs) != len(parts):
            continue
        params = {}
        for seg, part in zip(segs, parts, strict=True):
            if seg.startswith("{"):
                if not part:
                    break
                params[seg[1:-1]] = part
            elif seg != part:
                break
        else:
            path_exists = True
            if route.method == method:
                return route, params, True
    return None, {}, path_exists


_JSON = [(b"content-type", b"application/json")]
Response = tuple[int, bytes, list[tuple[bytes, bytes]]]


@dataclass
class Call:
    """One authenticated request as a route handler sees it."""

    route: Route
    params: dict[str, str]
    model: LoadedModel | None
    """The version serving when the request started (None before the first load)."""
    headers: dict[bytes, bytes]
    receive: Callable
    body: BodyReader
    client: str = ""
    extra: dict = field(default_factory=dict)


Handler = Callable[["ServeApp", Call], Awaitable[Response]]


class ServeApp:
    """ASGI app serving one model name from a ModelManager.

    Args:
        manager: provides `current` (LoadedModel or None) and is started/stopped by lifespan.
        token: the bearer token (str, non-empty).
        metrics: the Prometheus metrics (requests, rejections).
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
        token: str,
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
        self.access_log = access_log
        self.metrics = metrics
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.budget = budget or BodyBudget(1 << 62)
        self.decode_pool = decode_pool or DecodePool(None)
        self.sweep = sweep or Sweep()
        self.handlers: dict[str, Handler] = dict(_BUILTIN_HANDLERS)
        self._set_routes(ROUTES)
        self.set_token(token)

    def add_route(self, route: Route, handler: Handler) -> None:
        """Serve `route` with `handler` (behind the token unless `route.public`)."""
        if route.name in self.handlers:
            raise ValueError(f"route name {route.name!r} is taken")
        self.handlers[route.name] = handler
        self._set_routes((*self.routes, route))

    def _set_routes(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        self.match = functools.lru_cache(maxsize=512)(functools.partial(match_route, routes))

    def set_token(self, token: str) -> None:
        if not token:
            raise ValueError("the serving token is empty")
        self._token_digest = hashlib.sha256(token.encode()).digest()

    def authorized(self, header: bytes | None) -> bool:
        if not header or header[:7].lower() != b"bearer ":
            return False
        given = hashlib.sha256(header[7:].strip()).digest()
        return hmac.compare_digest(given, self._token_digest)

    async def read_body(self, call: Call) -> bytes:
        """The request body within the cap, the deadline and the in-flight budget."""
        return await call.body.read(call.headers, call.receive)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        route, params, path_exists = self.match(method, path)
        status, body, headers = 500, b"", _JSON
        route_name = route.name if route else "unmatched"
        client = (scope.get("client") or ("", 0))[0]
        body_size = 0
        version = ""
        reader = BodyReader(self.budget, self.max_body_bytes, self.body_timeout, self.sweep)
        try:
            raw_headers = scope["headers"]
            hdrs = dict(raw_headers)  # lower-cased names
            auth = hdrs.get(b"authorization")
            # a repeated header of any name makes the dict shorter: only then look for a second token
            if len(hdrs) != len(raw_headers) and sum(1 for name, _ in raw_headers if name == b"authorization") > 1:
                raise Refused(400, "more than one Authorization header; send exactly one", "duplicate_authorization")
            if not (route and route.public) and not self.authorized(auth):
                status, body = 401, b'{"error":"missing or invalid bearer token"}'
                # close: an unauthenticated client gets no keep-alive and no body read on its behalf
                headers = [*_JSON, (b"www-authenticate", b"Bearer"), (b"connection", b"close")]
            elif route is None:
                status = 405 if path_exists else 404
                body = orjson.dumps({"error": f"{method} {path[:200]} is not a route of this server"})
            else:
                model = self.manager.current
                version = model.version_str if model else ""
                call = Call(route, params, model, hdrs, receive, reader, client)
                status, body, headers = await self.handlers[route.name](self, call)
        except RequestError as e:
            status, body = e.status, orjson.dumps({"error": e.message})
            if isinstance(e, Refused):
                self.metrics.reject(e.reason, client)
                headers = [*_JSON, *([(b"connection", b"close")] if e.close else [])]
                headers += [(b"retry-after", b"1")] if e.retry_after else []
        except Disconnected:
            status = 499
        except Exception:
            log.exception("internal error on %s %s", method, path[:200])
            status, body = 500, b'{"error":"internal server error"}'
        try:
            if status != 499 and not isinstance(body, bytes):  # a stream (server-sent events)
                body_size = await send_stream(send, status, headers, body)
            elif status != 499:
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [*headers, (b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            reader.release()
        elapsed = time.perf_counter() - start
        self.metrics.observe(route_name, status, elapsed)
        if self.access_log is not None:
            size = len(body) if isinstance(body, bytes) else body_size
            self.access_log.request(client, method, path, route_name, status, elapsed, size, version)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.manager.start()
                self.decode_pool.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.manager.stop()
                self.decode_pool.stop()
                if self.access_log is not None:
                    self.access_log.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return


# --- the protocol's routes ----------------------------------------------------------------------


async def _live(app: ServeApp, call: Call) -> Response:
    return 200, b"", _JSON


async def _ready(app: ServeApp, call: Call) -> Response:
    if call.model is None:
        return 503, b'{"error":"no verified model has been loaded yet"}', _JSON
    return 200, b"", _JSON


async def _server_metadata(app: ServeApp, call: Call) -> Response:
    meta = {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}
    return 200, orjson.dumps(meta), _JSON


async def _metrics(app: ServeApp, call: Call) -> Response:
    return 200, generate_latest(app.metrics.registry), [(b"content-type", CONTENT_TYPE_LATEST.encode())]


def served_model(app: ServeApp, call: Call) -> LoadedModel:
    """The model a model route addresses, or RequestError 404/503 (for extension routes too)."""
    params, model = call.params, call.model
    if params["model"] != app.manager.model:
        raise RequestError(404, f"unknown model {params['model'][:64]!r}; this server serves {app.manager.model!r}")
    if model is None:
        raise RequestError(503, f"model {app.manager.model!r} is not loaded yet")
    if "version" in params and params["version"] != model.version_str:
        raise RequestError(404, f"version {params['version'][:16]!r} is not served (serving {model.version})")
    return model


async def _model_ready(app: ServeApp, call: Call) -> Response:
    served_model(app, call)
    return 200, b"", _JSON


async def _model_metadata(app: ServeApp, call: Call) -> Response:
    return 200, orjson.dumps(_metadata(served_model(app, call))), _JSON


async def _model_config(app: ServeApp, call: Call) -> Response:
    return 200, orjson.dumps(_triton_config(served_model(app, call))), _JSON


async def run_model(model: LoadedModel, inputs: dict) -> dict:
    """Run the model on the event loop when it is fast enough (`LoadedModel.inline`), else in a thread."""
    if model.inline:
        return model.run(inputs)
    return await asyncio.get_running_loop().run_in_executor(None, model.run, inputs)


async def _infer(app: ServeApp, call: Call) -> Response:
    model = served_model(app, call)
    header_length = None
    raw = call.headers.get(b"inference-header-content-length")
    if raw is not None:
        if not raw.strip().isdigit():
            raise RequestError(400, "Inference-Header-Content-Length must be a non-negative integer")
        header_length = int(raw)
    body = await app.read_body(call)
    req = await app.decode_pool.decode(body, header_length, model.inputs, model.outputs, app.limits)
    results = await run_model(model, req.inputs)
    out, json_length = encode_infer_response(model.name, model.version_str, req, results, model.outputs)
    if json_length is None:
        return 200, out, _JSON
    return (
        200,
        out,
        [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(json_length).encode()),
        ],
    )


_BUILTIN_HANDLERS: dict[str, Handler] = {
    "live": _live,
    "ready": _ready,
    "server_metadata": _server_metadata,
    "metrics": _metrics,
    "model_ready": _model_ready,
    "model_metadata": _model_metadata,
    "model_config": _model_config,
    "infer": _infer,
}


def _metadata(model: LoadedModel) -> dict:
    return {
        "name": model.name,
        "versions": [model.version_str],
        "platform": "onnxruntime_onnx",
        "inputs": [s.to_json() for s in model.inputs.values()],
        "outputs": [s.to_json() for s in model.outputs.values()],
    }


def _triton_config(model: LoadedModel) -> dict:
    def tensors(specs):
        return [{"name": s.name, "data_type": DATATYPES[s.datatype][1], "dims": list(s.shape)} for s in specs.values()]

    return {
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": 0,
        "input": tensors(model.inputs),
        "output": tensors(model.outputs),
    }
