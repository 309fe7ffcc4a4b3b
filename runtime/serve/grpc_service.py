"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), beside the HTTP port.

`stratus serve --grpc-port N` starts a `grpc.aio` server in the same event loop as the HTTP one:
an adapter of the same data plane (`runtime.serve.dataplane`) as the HTTP port, so the same
token (metadata `authorization: Bearer ...`, ServerLive the only call without it, a repeated
`authorization` refused), the same model manager (readiness, hot reload: a call uses the version
current when it started), the same tensor limits and body budget, and the same metrics (route
`grpc:<Method>`, `stratus_rejections_total`).

A ModelInfer request is checked by the same decoder as HTTP: its tensors become the binary form
of the REST request (`raw_input_contents` as they are; typed `contents` converted to the declared
datatype), so shapes, datatypes, finiteness, batch and element caps behave identically. Outputs
are returned in `raw_output_contents`, as Triton does.

Limits of grpc-core used here: message size (`--max-body-bytes`), metadata size
(`--max-header-bytes`), handshake and idle timeouts (`--header-timeout`, `--keepalive-timeout`),
concurrent calls (`--grpc-max-concurrent-rpcs`; beyond it RESOURCE_EXHAUSTED) and open
connections (`--max-connections`, the HTTP port's cap: grpc-core closes a connection beyond it at
accept, so the gRPC port can never take the file descriptors the HTTP port needs). grpc-core has
no per-address connection cap and reads a whole message before a handler runs, so gRPC memory is
bounded by concurrent calls x `--max-body-bytes`; the body budget is charged when the call starts.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import orjson

from runtime.repository.artifact import DATATYPES
from runtime.serve.body import BodyReader, Refused
from runtime.serve.dataplane import DataPlane
from runtime.serve.grpc_proto import SERVICE, messages
from runtime.serve.protocol import InferRequest, RequestError

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
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


class InferenceService:
    """The service's calls: a gRPC adapter of a DataPlane."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.m = messages()

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
            methods[name] = grpc.unary_unary_rpc_method_handler(
                self._guarded(name, call, public=name == "ServerLive"),
                request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _guarded(self, name: str, call, *, public: bool):
        plane = self.plane
        route, path = f"grpc:{name}", f"/{SERVICE}/{name}"

        async def run(request, context: grpc.aio.ServicerContext):
            start = time.perf_counter()
            status, message = 200, ""
            peer = context.peer() or ""
            reader = plane.body_reader()
            try:
                if not plane.auth.grpc(context.invocation_metadata(), public):
                    raise RequestError(401, "missing or invalid bearer token")
                response = await call(request, reader)
            except RequestError as e:
                status, message = e.status, e.message
                if isinstance(e, Refused):
                    plane.metrics.reject(e.reason, peer)
            finally:
                reader.release()
                model = plane.manager.current
                version = model.version_str if model else ""
                plane.record(route, status, time.perf_counter() - start, peer, "GRPC", path, 0, version)
            if status != 200:
                await context.abort(_CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT), message)
            return response

        return run

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


async def start_grpc(plane: DataPlane, host: str, port: int, *, limits: dict) -> grpc.aio.Server:
    """Start the gRPC server on host:port. `limits`: max_body_bytes, max_header_bytes,
    header_timeout, keepalive_timeout, max_concurrent_rpcs, max_connections. Raises RuntimeError
    if it cannot bind."""
    options = [
        ("grpc.max_receive_message_length", limits["max_body_bytes"]),
        ("grpc.max_send_message_length", 4 * limits["max_body_bytes"]),
        ("grpc.max_metadata_size", limits["max_header_bytes"]),
        ("grpc.server_handshake_timeout_ms", int(limits["header_timeout"] * 1000)),
        ("grpc.max_connection_idle_ms", int(limits["keepalive_timeout"] * 1000)),
        ("grpc.max_allowed_incoming_connections", limits["max_connections"]),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=limits["max_concurrent_rpcs"])
    server.add_generic_rpc_handlers((InferenceService(plane).handler(),))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise RuntimeError(f"gRPC: cannot bind {host}:{port}")
    await server.start()
    return server
