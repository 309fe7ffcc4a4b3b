"""The message classes of the Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`).

They are built from the file descriptors that protoc generated into the pinned `tritonclient`
distribution (`tritonclient/grpc/service_pb2.py`, `model_config_pb2.py`): Triton's
`grpc_service.proto`, a superset of KServe's `grpc_predict_v2.proto` with the same package,
service, method names and field numbers. The modules are not imported: they demand the protobuf
runtime they were generated with (6.x), while this project pins 5.29 (the Pulumi policy SDK needs
it). A serialized `FileDescriptorProto` is runtime-independent, so the descriptor literal is read
out of each file's source and loaded into a private descriptor pool; the message classes come
from protobuf's own message factory. Nothing is copied into this repository.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
from types import SimpleNamespace

from google.protobuf import descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"
_FILES = ("tritonclient/grpc/model_config_pb2.py", "tritonclient/grpc/service_pb2.py")  # dependency first
MESSAGES = (
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelInferRequest",
    "ModelInferResponse",
)


def _serialized_descriptor(source: str, path: str) -> bytes:
    """The bytes literal passed to `AddSerializedFile(...)` in generated protobuf code."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile" and node.args:
            value = ast.literal_eval(node.args[0])
            if isinstance(value, bytes):
                return value
    raise RuntimeError(f"{path}: no serialized file descriptor found; is tritonclient 2.73.0 installed?")


@functools.cache
def messages() -> SimpleNamespace:
    """The protocol's message classes by name (`messages().ModelInferRequest`, ...) and `service`,
    the service descriptor (method names, input and output types)."""
    try:
        dist = importlib.metadata.distribution("tritonclient")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("the gRPC service needs the tritonclient distribution (requirements/runtime.txt)") from None
    pool = descriptor_pool.DescriptorPool()
    for relative in _FILES:
        path = dist.locate_file(relative)
        pool.AddSerializedFile(_serialized_descriptor(path.read_text(), str(path)))
    classes = {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}")) for name in MESSAGES
    }
    return SimpleNamespace(service=pool.FindServiceByName(SERVICE), **classes)
