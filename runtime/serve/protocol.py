"""Open Inference Protocol (KServe v2) request decoding and response encoding, incl. binary data.

Pure functions over bytes and numpy arrays; the ASGI app (`runtime.serve.app`) calls them. Every
way a request can be wrong raises `RequestError(status, message)`; nothing here raises anything
else for any input bytes (the fuzz test in tests/e2e holds us to it).

Both encodings obey the same value rules: floats must be finite (NaN and +/-Inf answer 422, as a
JSON value outside the FP32 range does), BOOL bytes must be 0 or 1. A request names at most
MAX_REQUESTED_OUTPUTS outputs, and one named twice is answered once.

Status codes: 400 for a request that is malformed in itself (not JSON, missing fields, wrong
types, element count not matching the shape, binary sizes that do not add up); 422 for a
well-formed request that does not fit the model or the limits (unknown/missing input, datatype,
rank, shape, batch size, element count cap).

Binary tensor data extension (Triton): with header `Inference-Header-Content-Length: N` the body
is N bytes of JSON followed by the raw little-endian tensors of the inputs that carry
`"parameters": {"binary_data_size": n}`, in input order. Outputs are returned raw (response
header `Inference-Header-Content-Length`) when the request has `parameters.binary_data_output`
or the output has `parameters.binary_data`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import orjson

from runtime.repository.artifact import DATATYPES


class RequestError(Exception):
    """A bad request; `status` is the HTTP code, `message` says what to change."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):  # raised in the decode worker process too (runtime.serve.body)
        return type(self), (self.status, self.message)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the manifest declares it (batch dimension first, -1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(DATATYPES[self.datatype][0]).newbyteorder("<")

    def to_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Limits:
    """Per-request caps, checked before any tensor is built."""

    max_batch_size: int = 64
    """Largest first (batch) dimension accepted."""

    max_elements: int = 1 << 22
    """Largest element count of one input tensor."""


@dataclass
class InferRequest:
    """A decoded, validated request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[tuple[str, bool]] = field(default_factory=list)
    """Requested outputs as (name, binary); all model outputs when the request names none."""


MAX_REQUESTED_OUTPUTS = 64
"""Most entries in a request's `outputs` list; repeated names are answered once."""

_ALLOWED_KINDS = {"BOOL": "b", "FP16": "fiu", "FP32": "fiu", "FP64": "fiu"}


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def _unfit(message: str) -> RequestError:
    return RequestError(422, message)


def _check_shape(item: dict, spec: TensorSpec, limits: Limits) -> tuple[int, ...]:
    shape = item.get("shape")
    if not isinstance(shape, list) or any(type(d) is not int for d in shape):
        raise _bad(f"input {spec.name!r}: 'shape' must be a list of integers, got {shape!r}")
    if len(shape) != len(spec.shape):
        raise _unfit(f"input {spec.name!r}: rank {len(shape)} (shape {shape}), the model expects {list(spec.shape)}")
    for dim, want in zip(shape, spec.shape, strict=True):
        if dim < 1 or (want != -1 and dim != want):
            raise _unfit(f"input {spec.name!r}: shape {shape} does not fit the model's {list(spec.shape)}")
    if spec.shape[0] == -1 and shape[0] > limits.max_batch_size:
        raise _unfit(f"input {spec.name!r}: batch {shape[0]} exceeds the cap of {limits.max_batch_size}; split it")
    count = math.prod(shape)
    if count > limits.max_elements:
        raise _unfit(f"input {spec.name!r}: {count} elements exceed the cap of {limits.max_elements}")
    return tuple(shape)


def _from_json_data(data, spec: TensorSpec, shape: tuple[int, ...], count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise _bad(f"input {spec.name!r}: 'data' must be a (flat or nested) list")
    try:
        arr = np.array(data)
    except (ValueError, TypeError, RecursionError):
        raise _bad(f"input {spec.name!r}: 'data' is ragged or not numeric") from None
    kinds = _ALLOWED_KINDS.get(spec.datatype, "iu")
    if arr.dtype.kind not in kinds or (arr.size == 0 and count):
        raise _bad(f"input {spec.name!r}: 'data' must hold {spec.datatype} values, got {arr.dtype.name}")
    if arr.size != count:
        raise _bad(f"input {spec.name!r}: 'data' has {arr.size} values, shape {list(shape)} needs {count}")
    dtype = spec.dtype
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise _unfit(f"input {spec.name!r}: values outside the {spec.datatype} range")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(dtype, copy=False).reshape(shape)
    _check_values(out, spec)
    return out


def _decode_input(
    item: object, inputs: dict[str, TensorSpec], limits: Limits, binary: memoryview, offset: int, seen: dict
) -> tuple[str, np.ndarray, int]:
    """One entry of `inputs`: (its name, its array, the binary bytes it claimed from `offset`)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise _bad("each input must be an object with a string 'name'")
    name = item["name"]
    spec = inputs.get(name)
    if spec is None:
        raise _unfit(f"unknown input {name[:64]!r}; the model takes {sorted(inputs)}")
    if name in seen:
        raise _bad(f"input {name!r} given twice")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise _bad(f"input {name!r}: 'datatype' must be a string such as {spec.datatype!r}")
    if datatype != spec.datatype:
        raise _unfit(f"input {name!r}: datatype {datatype[:16]!r}, the model expects {spec.datatype!r}")
    shape = _check_shape(item, spec, limits)
    count = math.prod(shape)
    iparams = item.get("parameters") or {}
    if not isinstance(iparams, dict):
        raise _bad(f"input {name!r}: 'parameters' must be an object")
    size = iparams.get("binary_data_size")
    if size is None:
        return name, _from_json_data(item.get("data"), spec, shape, count), 0
    if type(size) is not int or size < 0:
        raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
    if "data" in item:
        raise _bad(f"input {name!r}: give either 'data' or binary_data_size, not both")
    if size != count * spec.dtype.itemsize:
        raise _bad(
            f"input {name!r}: binary_data_size {size}, but shape {list(shape)} of {datatype} "
            f"needs {count * spec.dtype.itemsize} bytes"
        )
    if offset + size > len(binary):
        raise _bad(f"input {name!r}: binary data ends after {len(binary) - offset} of {size} bytes")
    array = np.frombuffer(binary[offset : offset + size], dtype=spec.dtype).reshape(shape)
    _check_values(array, spec)
    return name, array, size


FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
"""The protocol's floating-point datatypes: their values must be finite."""


def _check_values(array: np.ndarray, spec: TensorSpec) -> None:
    """The value rules both encodings share: finite floats, BOOL bytes 0 or 1."""
    if spec.datatype in FLOAT_DATATYPES and not np.isfinite(array).all():
        raise _unfit(f"input {spec.name!r}: values must be finite and within the {spec.datatype} range")
    if spec.datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise _unfit(f"input {spec.name!r}: BOOL values must be bytes 0 or 1")


def decode_infer_request(
    body: bytes,
    header_length: int | None,
    inputs: dict[str, TensorSpec],
    outputs: dict[str, TensorSpec],
    limits: Limits,
) -> InferRequest:
    """Decode and validate an infer request against the model's tensor specs.

    Args:
        body: the full (decompressed) request body.
        header_length: the `Inference-Header-Content-Length` value, or None for a pure-JSON body.
        inputs/outputs: the model's tensor specs by name.
        limits: per-request caps.

    Returns:
        The request with one array per model input (shape and dtype exactly as the model expects).

    Raises:
        RequestError: 400/422 with a message naming the field to fix.
    """
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if not 0 <= header_length <= len(body):
            raise _bad(f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        req = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        raise _bad(f"request body is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise _bad("request body must be a JSON object with 'inputs'")
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise _bad("'id' must be a string")
    params = req.get("parameters") or {}
    items = req.get("inputs")
    if not isinstance(params, dict):
        raise _bad("'parameters' must be an object")
    if not isinstance(items, list) or not items:
        raise _bad("'inputs' must be a non-empty list of tensors")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        name, array, used = _decode_input(item, inputs, limits, binary, offset, arrays)
        arrays[name] = array
        offset += used
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    missing = sorted(set(inputs) - set(arrays))
    if missing:
        raise _unfit(f"missing input(s) {missing}")
    return InferRequest(id=req_id, inputs=arrays, outputs=_requested_outputs(req, params, outputs))


def _requested_outputs(req: dict, params: dict, outputs: dict[str, TensorSpec]) -> list[tuple[str, bool]]:
    binary_default = params.get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise _bad("parameters.binary_data_output must be true or false")
    wanted = req.get("outputs")
    if wanted is None:
        return [(name, binary_default) for name in outputs]
    if not isinstance(wanted, list) or not wanted:
        raise _bad("'outputs' must be a non-empty list of {name, parameters}")
    if len(wanted) > MAX_REQUESTED_OUTPUTS:
        raise _unfit(f"'outputs' has {len(wanted)} entries; at most {MAX_REQUESTED_OUTPUTS} (each output once)")
    result = []
    seen: set[str] = set()
    for item in wanted:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad("each requested output must be an object with a string 'name'")
        if item["name"] not in outputs:
            raise _bad(f"unknown output {item['name'][:64]!r}; the model has {sorted(outputs)}")
        oparams = item.get("parameters") or {}
        binary = oparams.get("binary_data", binary_default) if isinstance(oparams, dict) else None
        if type(binary) is not bool:
            raise _bad(f"output {item['name']!r}: parameters.binary_data must be true or false")
        if item["name"] not in seen:  # a repeated output is returned once (the first entry's encoding)
            seen.add(item["name"])
            result.append((item["name"], binary))
    return result


def encode_infer_response(
    model_name: str,
    model_version: str,
    req: InferRequest,
    results: dict[str, np.ndarray],
    outputs: dict[str, TensorSpec],
) -> tuple[bytes, int | None]:
    """Encode results as a v2 response; returns (body, JSON header length or None if pure JSON)."""
    tensors = []
    chunks: list[bytes] = []
    for name, binary in req.outputs:
        arr = np.ascontiguousarray(results[name], dtype=outputs[name].dtype)
        tensor = {"name": name, "datatype": outputs[name].datatype, "shape": list(arr.shape)}
        if binary:
            raw = arr.tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = arr.ravel().tolist()
        tensors.append(tensor)
    response = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if req.id is not None:
        response["id"] = req.id
    header = orjson.dumps(response)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
