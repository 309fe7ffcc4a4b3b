"""The ASGI application of `runtime.serve`: routing, default-deny auth, body limits, metrics, logs.

A plain ASGI callable (no framework): the protocol handling is small and this keeps per-request
overhead low (see docs/benchmarks.md, "Serving"). Run it on uvicorn with httptools + uvloop.

Security model: `ROUTES` is the whole route table; only routes marked `public` (liveness) skip
the bearer check, and the check runs before routing, so unknown paths also answer 401 without a
valid token. Tokens are compared as sha256 digests with `hmac.compare_digest` (constant time, no
length leak). Bodies are capped while they arrive (Content-Length, chunked, and after gzip or
deflate decompression) and a body that arrives too slowly is cut off (408).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import time
import zlib
from dataclasses import dataclass

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime import __version__
from runtime.repository.artifact import DATATYPES
from runtime.serve.metrics import AccessLog, Metrics
from runtime.serve.model import LoadedModel, ModelManager
from runtime.serve.protocol import Limits, RequestError, decode_infer_request, encode_infer_response

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


@functools.lru_cache(maxsize=512)
def match_route(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """Return (route, path params, path_exists). `path_exists` with no route means 405.

    Cached (bounded LRU): callers must not mutate the returned params."""
    parts = tuple(path.strip("/").split("/"))
    path_exists = False
    for route in ROUTES:
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


class _Disconnected(Exception):
    pass


_JSON = [(b"content-type", b"application/json")]


class ServeApp:
    """ASGI app serving one model name from a ModelManager.

    Args:
        manager: provides `current` (LoadedModel or None) and is started/stopped by lifespan.
        token: the bearer token (str, non-empty).
        limits: per-request tensor caps.
        max_body_bytes: cap on the (decompressed) request body.
        body_timeout: seconds allowed for a body that arrives in more than one piece.
        access_log: where to write one JSON line per request; None disables it.
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
        access_log: AccessLog | None = None,
    ):
        self.manager = manager
        self.access_log = access_log
        self.metrics = metrics
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.set_token(token)

    def set_token(self, token: str) -> None:
        if not token:
            raise ValueError("the serving token is empty")
        self._token_digest = hashlib.sha256(token.encode()).digest()

    def authorized(self, header: bytes | None) -> bool:
        if not header or header[:7].lower() != b"bearer ":
            return False
        given = hashlib.sha256(header[7:].strip()).digest()
        return hmac.compare_digest(given, self._token_digest)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        route, params, path_exists = match_route(method, path)
        status, body, headers = 500, b"", _JSON
        route_name = route.name if route else "unmatched"
        version = ""
        try:
            hdrs = dict(scope["headers"])  # lower-cased names; a repeated header keeps the last
            if not (route and route.public) and not self.authorized(hdrs.get(b"authorization")):
                status, body = 401, b'{"error":"missing or invalid bearer token"}'
                headers = [*_JSON, (b"www-authenticate", b"Bearer")]
            elif route is None:
                status = 405 if path_exists else 404
                body = orjson.dumps({"error": f"{method} {path[:200]} is not a route of this server"})
            else:
                model = self.manager.current
                version = model.version_str if model else ""
                status, body, headers = await self._dispatch(route, params, model, hdrs, receive)
        except RequestError as e:
            status, body = e.status, orjson.dumps({"error": e.message})
            if status == 413:
                headers = [*_JSON, (b"connection", b"close")]
        except _Disconnected:
            status = 499
        except Exception:
            log.exception("internal error on %s %s", method, path[:200])
            status, body = 500, b'{"error":"internal server error"}'
        if status != 499:
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elapsed = time.perf_counter() - start
        self.metrics.observe(route_name, status, elapsed)
        if self.access_log is not None:
            client = scope.get("client") or ("", 0)
            self.access_log.write(
                {
                    "ts": round(time.time(), 3),
                    "level": "info",
                    "logger": "stratus.access",
                    "client": client[0],
                    "method": method,
                    "path": path[:256],
                    "route": route_name,
                    "status": status,
                    "ms": round(elapsed * 1e3, 3),
                    "bytes_out": len(body),
                    "model_version": version,
                }
            )

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.manager.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.manager.stop()
                if self.access_log is not None:
                    self.access_log.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, route: Route, params: dict, model: LoadedModel | None, hdrs: dict, receive):
        name = route.name
        if name == "live":
            return 200, b"", _JSON
        if name == "ready":
            if model is None:
                return 503, b'{"error":"no verified model has been loaded yet"}', _JSON
            return 200, b"", _JSON
        if name == "server_metadata":
            meta = {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}
            return 200, orjson.dumps(meta), _JSON
        if name == "metrics":
            return 200, generate_latest(self.metrics.registry), [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        if params["model"] != self.manager.model:
            raise RequestError(
                404, f"unknown model {params['model'][:64]!r}; this server serves {self.manager.model!r}"
            )
        if model is None:
            raise RequestError(503, f"model {self.manager.model!r} is not loaded yet")
        if "version" in params and params["version"] != model.version_str:
            raise RequestError(404, f"version {params['version'][:16]!r} is not served (serving {model.version})")
        if name == "model_ready":
            return 200, b"", _JSON
        if name == "model_metadata":
            return 200, orjson.dumps(_metadata(model)), _JSON
        if name == "model_config":
            return 200, orjson.dumps(_triton_config(model)), _JSON
        return await self._infer(model, hdrs, receive)

    async def _infer(self, model: LoadedModel, hdrs: dict, receive):
        header_length = None
        raw = hdrs.get(b"inference-header-content-length")
        if raw is not None:
            if not raw.strip().isdigit():
                raise RequestError(400, "Inference-Header-Content-Length must be a non-negative integer")
            header_length = int(raw)
        body = await self._read_body(hdrs, receive)
        req = decode_infer_request(body, header_length, model.inputs, model.outputs, self.limits)
        if model.inline:
            results = model.run(req.inputs)
        else:
            results = await asyncio.get_running_loop().run_in_executor(None, model.run, req.inputs)
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

    async def _read_body(self, hdrs: dict, receive) -> bytes:
        cap = self.max_body_bytes
        declared = hdrs.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise RequestError(413, f"request body of {int(declared)} bytes exceeds the cap of {cap}")
        chunks: list[bytes] = []
        total = 0
        try:
            # One deadline for the whole body, first byte included (slow-body clients get 408).
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > cap:
                        raise RequestError(413, f"request body exceeds the cap of {cap} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            raise RequestError(408, f"request body not received within {self.body_timeout} s") from None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(body) > cap:
            raise RequestError(413, f"request body exceeds the cap of {cap} bytes")
        encoding = hdrs.get(b"content-encoding", b"identity").strip().lower()
        if encoding in (b"", b"identity"):
            return body
        return _decompress(body, encoding, cap)


def _decompress(body: bytes, encoding: bytes, cap: int) -> bytes:
    wbits = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}.get(encoding)
    if wbits is None:
        raise RequestError(415, f"Content-Encoding {encoding[:32].decode(errors='replace')!r}: use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, cap + 1)
    except zlib.error as e:
        raise RequestError(400, f"request body is not valid {encoding.decode()}: {e}") from None
    if len(out) > cap:
        raise RequestError(413, f"decompressed request body exceeds the cap of {cap} bytes")
    if not inflater.eof or inflater.unused_data:
        raise RequestError(400, f"request body is a truncated or concatenated {encoding.decode()} stream")
    return out


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
