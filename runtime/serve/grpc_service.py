"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), beside the HTTP port.

`stratus serve --grpc-port N` starts a `grpc.aio` server in the same event loop as the HTTP one,
over TLS with the HTTP port's certificate (`runtime.serve.tls`; plaintext only with
--insecure-plain-http):
an adapter of the same data plane (`runtime.serve.dataplane`) as the HTTP port, so the same
token (metadata `authorization: Bearer ...`, ServerLive the only call without it, a repeated
`authorization` refused), the same model manager (readiness, hot reload: a call uses the version
current when it started), the same tensor limits and body budget, and the same metrics (route
`grpc:<Method>`, `stratus_rejections_total`).

A ModelInfer request is checked by the same decoder as HTTP: its tensors become the binary form
of the REST request (`raw_input_contents` as they are; typed `contents` converted to the declared
datatype), so shapes, datatypes, finiteness, batch and element caps behave identically. Outputs
are returned in `raw_output_contents`, as Triton does.

Calls are admitted in this order, so that nothing an anonymous client sends can hold what others
need: each method is registered as request-streaming with no deserializer, so the handler runs as
soon as the call's HEADERS arrive; it checks the token from the metadata first (an anonymous call
is answered UNAUTHENTICATED at once and never waits for its message), then waits at most
`--body-timeout` for the one request message (DEADLINE_EXCEEDED after it), parses it here (a
malformed message is INVALID_ARGUMENT, without a traceback), and only then takes one of
`--grpc-max-concurrent-rpcs` slots (beyond it RESOURCE_EXHAUSTED). Every refusal by a limit is
counted in `stratus_rejections_total{reason=...}` and logged (at most one line per reason per
second).

Limits of grpc-core used here: message size (`--max-body-bytes`), metadata size
(`--max-header-bytes`), handshake and idle timeouts (`--header-timeout`, `--keepalive-timeout`),
open connections (`--max-connections`, the HTTP port's cap: grpc-core closes a connection beyond
it at accept, so the gRPC port can never take the file descriptors the HTTP port needs) and
streams per connection (`GRPC_STREAMS_PER_CONNECTION`, advertised in SETTINGS; a client that opens
more has them refused). HTTP/2 rapid reset (HEADERS then RST_STREAM in a loop) is bounded by
grpc-core's own mitigation, which the stream cap turns on: it counts streams a client resets
before the server answered them against the cap and, with the requests-per-read limit below,
keeps one connection from starving the others. grpc-core has no per-address connection cap and
reads a whole message before it hands it over, so gRPC memory is bounded by authenticated calls
waiting for their message x `--max-body-bytes`; the body budget is charged once the message is
in.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import orjson
from google.protobuf.message import DecodeError

from runtime.repository.artifact import DATATYPES
from runtime.serve.body import BodyReader, Refused
from runtime.serve.dataplane import DataPlane
from runtime.serve.grpc_proto import SERVICE, messages
from runtime.serve.protocol import InferRequest, RequestError

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


GRPC_STREAMS_PER_CONNECTION = 32
"""Concurrent streams one HTTP/2 connection may open (SETTINGS_MAX_CONCURRENT_STREAMS); a stock
client queues calls beyond it on its side."""
GRPC_REQUESTS_PER_READ = 16
"""New streams grpc-core accepts from one read of a connection before it serves the others."""


class InferenceService:
    """The service's calls: a gRPC adapter of a DataPlane.

    Args:
        plane: the data plane every call goes through.
        max_concurrent_rpcs: authenticated calls whose message arrived that may run at once
            (None: unbounded).
    """

    def __init__(self, plane: DataPlane, max_concurrent_rpcs: int | None = None):
        self.plane = plane
        self.m = messages()
        self.max_active = max_concurrent_rpcs
        self.active = 0

    def handler(self) -> grpc.GenericRpcHandler:
        calls = {
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ModelReady": self._model_ready,
            "ServerMetadata": self._server_metadata,
            "ModelMetadata": self._model_metadata,
            "ModelInfer": self._model_infer,
        }
        methods = {}
        for name, call in calls.items():
            method = self.m.service.methods_by_name[name]
            request_cls = getattr(self.m, method.input_type.name)
            response_cls = getattr(self.m, method.output_type.name)
            # Request-streaming without a deserializer: the handler runs on HEADERS, before the
            # message, and parses the message itself (see the module docstring).
            methods[name] = grpc.stream_unary_rpc_method_handler(
                self._guarded(name, call, request_cls, public=name == "ServerLive"),
                request_deserializer=None,
                response_serializer=response_cls.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _guarded(self, name: str, call, request_cls, *, public: bool):
        plane = self.plane
        route, path = f"grpc:{name}", f"/{SERVICE}/{name}"

        async def run(request_iterator, context: grpc.aio.ServicerContext):
            start = time.perf_counter()
            status, message = 200, ""
            peer = context.peer() or ""
            reader = plane.body_reader()
            slot = False
            try:
                if not plane.auth.grpc(context.invocation_metadata(), public):
                    raise RequestError(401, "missing or invalid bearer token")
                request = await self._read_request(context, request_cls, name)
                if self.max_active is not None and self.active >= self.max_active:
                    raise Refused(
                        429,
                        f"{self.max_active} gRPC calls in progress (--grpc-max-concurrent-rpcs); retry",
                        "grpc_concurrency",
                    )
                self.active += 1
                slot = True
                response = await call(request, reader)
            except RequestError as e:
                status, message = e.status, e.message
                if isinstance(e, Refused):
                    plane.metrics.reject(e.reason, peer)
            finally:
                if slot:
                    self.active -= 1
                reader.release()
                model = plane.manager.current
                version = model.version_str if model else ""
                plane.record(route, status, time.perf_counter() - start, peer, "GRPC", path, 0, version)
            if status != 200:
                await context.abort(_CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT), message)
            return response

        return run

    async def _read_request(self, context: grpc.aio.ServicerContext, request_cls, name: str):
        """The call's one request message, parsed: Refused(408) when it does not arrive within
        the body timeout, RequestError(400) when it is missing or malformed."""
        seconds = self.plane.body_timeout
        try:
            async with asyncio.timeout(seconds):
                raw = await context.read()
        except TimeoutError:
            raise Refused(408, f"request message not received within {seconds:g} s", "body_timeout") from None
        if raw is grpc.aio.EOF:
            raise RequestError(400, f"{name}: the call ended without a request message")
        try:
            return request_cls.FromString(raw)
        except DecodeError:
            raise RequestError(400, f"{name}: malformed {request_cls.__name__} message") from None

    # calls
    async def _server_live(self, request, reader):
        return self.m.ServerLiveResponse(live=True)

    async def _server_ready(self, request, reader):
        return self.m.ServerReadyResponse(ready=self.plane.ready())

    async def _model_ready(self, request, reader):
        return self.m.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def _server_metadata(self, request, reader):
        return self.m.ServerMetadataResponse(**self.plane.server_metadata([]))

    async def _model_metadata(self, request, reader):
        plane = self.plane
        meta = plane.model_metadata(plane.model(request.name, request.version, plane.manager.current))
        response = self.m.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for tensors, field in ((meta["inputs"], response.inputs), (meta["outputs"], response.outputs)):
            for tensor in tensors:
                field.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        return response

    async def _model_infer(self, request, reader: BodyReader):
        plane = self.plane
        model = plane.model(request.model_name, request.model_version, plane.manager.current)
        reader.take(request.ByteSize())
        head, payload = as_binary_request(request)
        decoded, results = await plane.infer(model, head + payload, len(head))
        return infer_response(model.name, model.version_str, request.id, decoded, results, model.outputs)


def infer_response(name: str, version: str, request_id: str, decoded: InferRequest, results: dict, specs: dict):
    """The ModelInferResponse for `decoded`'s requested outputs, each raw in `raw_output_contents`."""
    response = messages().ModelInferResponse(model_name=name, model_version=version, id=request_id)
    for output, _ in decoded.outputs:
        spec = specs[output]
        array = np.ascontiguousarray(results[output], dtype=spec.dtype)
        response.outputs.add(name=output, datatype=spec.datatype, shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


def as_binary_request(request) -> tuple[bytes, bytes]:
    """The request as the REST binary form: (JSON head, concatenated raw tensors)."""
    raw_inputs = request.raw_input_contents
    if raw_inputs and len(raw_inputs) != len(request.inputs):
        raise RequestError(400, f"{len(raw_inputs)} raw_input_contents for {len(request.inputs)} inputs")
    if raw_inputs and any(tensor.HasField("contents") for tensor in request.inputs):
        raise RequestError(400, "send each input in raw_input_contents or in contents, not both")
    inputs, chunks = [], []
    for i, tensor in enumerate(request.inputs):
        data = raw_inputs[i] if raw_inputs else _contents_bytes(tensor)
        item = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        item["parameters"] = {"binary_data_size": len(data)}
        inputs.append(item)
        chunks.append(data)
    head = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if request.outputs:
        head["outputs"] = [{"name": o.name} for o in request.outputs]
    return orjson.dumps(head), b"".join(chunks)


def _contents_bytes(tensor) -> bytes:
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise RequestError(422, f"input {tensor.name[:64]!r}: datatype {tensor.datatype[:16]!r} is not supported")
    dtype = np.dtype(DATATYPES[tensor.datatype][0]).newbyteorder("<")
    try:
        return np.asarray(getattr(tensor.contents, field), dtype=dtype).tobytes()
    except OverflowError:
        raise RequestError(422, f"input {tensor.name[:64]!r}: values outside the {tensor.datatype} range") from None


async def start_grpc(plane: DataPlane, host: str, port: int, *, limits: dict, credentials=None) -> grpc.aio.Server:
    """Start the gRPC server on host:port. `limits`: max_body_bytes, max_header_bytes,
    header_timeout, keepalive_timeout, max_concurrent_rpcs, max_connections. `credentials`: TLS
    server credentials (`runtime.serve.tls.Certificates.grpc_credentials`; None: plaintext, only
    with --insecure-plain-http). Raises RuntimeError if it cannot bind."""
    options = [
        ("grpc.max_receive_message_length", limits["max_body_bytes"]),
        ("grpc.max_send_message_length", 4 * limits["max_body_bytes"]),
        ("grpc.max_metadata_size", limits["max_header_bytes"]),
        ("grpc.server_handshake_timeout_ms", int(limits["header_timeout"] * 1000)),
        ("grpc.max_connection_idle_ms", int(limits["keepalive_timeout"] * 1000)),
        ("grpc.max_allowed_incoming_connections", limits["max_connections"]),
        ("grpc.max_concurrent_streams", GRPC_STREAMS_PER_CONNECTION),
        ("grpc.http2.max_requests_per_read", GRPC_REQUESTS_PER_READ),
        ("grpc.so_reuseport", 0),
    ]
    # No `maximum_concurrent_rpcs`: grpc.aio counts a call from its HEADERS, before authentication
    # and before its message, so anonymous streams held open would take every slot.
    service = InferenceService(plane, limits["max_concurrent_rpcs"])
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((service.handler(),))
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"gRPC: cannot bind {host}:{port}")
    await server.start()
    return server
