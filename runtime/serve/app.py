"""The HTTP adapter of the serving data plane: an ASGI application (routing, HTTP errors).

A plain ASGI callable (no framework): the protocol handling is small and this keeps per-request
overhead low (see docs/benchmarks.md, "Serving"). It runs behind the HTTP front
(`runtime.serve.front`, uvicorn + httptools + uvloop), which bounds connections and request heads
before anything here runs; bodies are bounded by `runtime.serve.body`. What the routes do (model
lookup, readiness, auth, inference, metrics and the access log) is `runtime.serve.dataplane`'s,
shared with the gRPC adapter (`runtime.serve.grpc_service`).

Security model: the route table (`ROUTES` plus routes added with `ServeApp.add_route`) is the
whole surface; only routes marked `public` (liveness, server readiness) skip the bearer check, and the check runs
before routing, so unknown paths also answer 401 without a valid token. A request with more than
one Authorization header is refused (400) rather than picking one (`runtime.serve.auth`). HEAD
is answered wherever GET is (same status and headers, no body).

Extension routes: a serving extension registered on the data plane under a name in
`EXTENSION_ROUTES` (e.g. "generate") gets that name's routes when the app is built. Other routes:
`app.add_route(Route("POST", "/v2/models/{model}/x", "x"), handler)` with `async def
handler(app, call) -> (status, body, headers)` (`body` bytes, or an async iterator of byte
chunks that is streamed, e.g. server-sent events); `call.model` is the version the request
started with (None before the first load), `await app.read_body(call)` reads the body within the
size cap, deadline and in-flight budget, and `RequestError` becomes a JSON error.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.serve.body import BodyReader, Disconnected, Refused
from runtime.serve.dataplane import DataPlane
from runtime.serve.model import LoadedModel
from runtime.serve.protocol import RequestError, encode_infer_response
from runtime.serve.stream import send_stream, until_disconnected

log = logging.getLogger("stratus.serve")


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
    # Public like liveness: the load balancer's health check carries no token (an NLB cannot send
    # headers), and the answer says only "a verified model is loaded and the server is not draining".
    Route("GET", "/v2/health/ready", "ready", public=True),
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
_UNAUTHORIZED = b'{"error":"missing or invalid bearer token"}'
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
    """ASGI adapter of a DataPlane: routes HTTP requests to it (and to its extensions' routes).

    Args:
        plane: the data plane (model, token, limits, metrics, access log, extensions).
    """

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.handlers: dict[str, Handler] = dict(_BUILTIN_HANDLERS)
        self.error_formats: dict[str, Callable[[RequestError], bytes]] = {}
        """Path prefix -> the error body of a protocol with its own error shape (e.g. "/v1/")."""
        self._set_routes(ROUTES)
        for name in plane.extensions:
            for route, handler in EXTENSION_ROUTES.get(name, ()):
                self.add_route(route, handler)

    def add_route(self, route: Route, handler: Handler) -> None:
        """Serve `route` with `handler` (behind the token unless `route.public`)."""
        if route.name in self.handlers:
            raise ValueError(f"route name {route.name!r} is taken")
        self.handlers[route.name] = handler
        self._set_routes((*self.routes, route))

    def _set_routes(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        self.match = functools.lru_cache(maxsize=512)(functools.partial(match_route, routes))

    def error_body(self, path: str, error: RequestError) -> bytes:
        """The JSON error body for `error` on `path` (`{"error": message}` unless a prefix of
        `path` has its own format in `error_formats`)."""
        for prefix, fmt in self.error_formats.items():
            if path.startswith(prefix):
                return fmt(error)
        return orjson.dumps({"error": error.message})

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
        plane = self.plane
        method, path = scope["method"], scope["path"]
        route, params, path_exists = self.match(method, path)
        status, body, headers = 500, b"", _JSON
        route_name = route.name if route else "unmatched"
        client = (scope.get("client") or ("", 0))[0]
        body_size = 0
        version = ""
        reader = plane.body_reader()
        try:
            raw_headers = scope["headers"]
            hdrs = dict(raw_headers)  # lower-cased names
            if not plane.auth.http(hdrs, raw_headers, route is not None and route.public):
                status, body = 401, _UNAUTHORIZED
                if self.error_formats:
                    body = self.error_body(path, RequestError(401, "missing or invalid bearer token"))
                # close: an unauthenticated client gets no keep-alive and no body read on its behalf
                headers = [*_JSON, (b"www-authenticate", b"Bearer"), (b"connection", b"close")]
            elif route is None:
                status = 405 if path_exists else 404
                body = self.error_body(
                    path, RequestError(status, f"{method} {path[:200]} is not a route of this server")
                )
            else:
                model = plane.manager.current
                version = model.version_str if model else ""
                call = Call(route, params, model, hdrs, receive, reader, client)
                status, body, headers = await self.handlers[route.name](self, call)
        except RequestError as e:
            status, body = e.status, self.error_body(path, e)
            if isinstance(e, Refused):
                plane.metrics.reject(e.reason, client)
                headers = [*_JSON, *([(b"connection", b"close")] if e.close else [])]
                headers += [(b"retry-after", b"1")] if e.retry_after else []
        except Disconnected:
            status = 499
        except Exception:
            log.exception("internal error on %s %s", method, path[:200])
            status, body = 500, b'{"error":"internal server error"}'
        try:
            if status != 499 and not isinstance(body, bytes):  # a stream (server-sent events)
                body_size, complete = await send_stream(send, status, headers, body, receive)
                if not complete:
                    status = 499  # the client went away: the generation behind the stream was stopped
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
        size = len(body) if isinstance(body, bytes) else body_size
        plane.record(route_name, status, time.perf_counter() - start, client, method, path, size, version)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.plane.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.plane.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


# --- the protocol's routes ----------------------------------------------------------------------


async def _live(app: ServeApp, call: Call) -> Response:
    return 200, b"", _JSON


async def _ready(app: ServeApp, call: Call) -> Response:
    if app.plane.draining:
        return 503, b'{"error":"draining: this server is shutting down"}', _JSON
    if call.model is None:
        return 503, b'{"error":"no verified model has been loaded yet"}', _JSON
    return 200, b"", _JSON


async def _server_metadata(app: ServeApp, call: Call) -> Response:
    return 200, orjson.dumps(app.plane.server_metadata(["binary_tensor_data"])), _JSON


async def _metrics(app: ServeApp, call: Call) -> Response:
    return 200, generate_latest(app.plane.metrics.registry), [(b"content-type", CONTENT_TYPE_LATEST.encode())]


def served_model(app: ServeApp, call: Call) -> LoadedModel:
    """The model a model route addresses, or RequestError 404/503 (for extension routes too)."""
    params = call.params
    return app.plane.model(params["model"], params.get("version", ""), call.model)


async def _model_ready(app: ServeApp, call: Call) -> Response:
    served_model(app, call)
    return 200, b"", _JSON


async def _model_metadata(app: ServeApp, call: Call) -> Response:
    return 200, orjson.dumps(app.plane.model_metadata(served_model(app, call))), _JSON


async def _model_config(app: ServeApp, call: Call) -> Response:
    return 200, orjson.dumps(app.plane.model_config(served_model(app, call))), _JSON


async def _infer(app: ServeApp, call: Call) -> Response:
    model = served_model(app, call)
    header_length = None
    raw = call.headers.get(b"inference-header-content-length")
    if raw is not None:
        if not raw.strip().isdigit() or len(raw.strip()) > 18:
            raise RequestError(400, "Inference-Header-Content-Length must be a non-negative integer")
        header_length = int(raw)
    body = await call.body.read(call.headers, call.receive)
    req, results = await app.plane.infer(model, body, header_length)
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


# --- extension routes (serving extensions of the data plane, by name) ---------------------------

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def _sse(events: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """Server-sent events, one `data: <JSON>` per event; closing this closes `events`."""
    async with aclosing(events):
        async for event in events:
            yield b"data: " + orjson.dumps(event) + b"\n\n"


def _generate_route(stream_route: bool) -> Handler:
    """/generate (or /generate_stream with `stream_route`) on the plane's "generate" extension."""

    async def generate(app: ServeApp, call: Call) -> Response:
        # mounted only when the plane holds the extension, so only the model can refuse it here
        model = served_model(app, call)
        extension = app.plane.model_extension(model, "generate")
        extension.check(model)
        req = extension.parse(await app.read_body(call), stream_route)
        relay = await extension.start(model, req)
        if req.stream:
            return 200, _sse(extension.events(model, relay)), _SSE_HEADERS
        result = await until_disconnected(call.receive, extension.complete(model, relay), relay.aclose)
        return 200, orjson.dumps(result), _JSON

    return generate


EXTENSION_ROUTES: dict[str, tuple[tuple[Route, Handler], ...]] = {
    "generate": (
        (Route("POST", "/v2/models/{model}/generate", "generate"), _generate_route(False)),
        (Route("POST", "/v2/models/{model}/generate_stream", "generate_stream"), _generate_route(True)),
    ),
}
"""The HTTP routes of each serving extension the data plane may hold (mounted by ServeApp)."""
