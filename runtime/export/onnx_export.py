"""ONNX export (FP32, dynamic batch) and int8 quantization with ONNX Runtime's own tools.

The exported graph is `WithSigmoid(logits_model)`: input `input` [batch, d] FP32, output
`probability` [batch, 1] FP32, batch dynamic. Quantization:

- dynamic (default): `quantize_dynamic`, weights int8 (per tensor or per channel), activations
  quantized per batch at run time (`DynamicQuantizeLinear` + `MatMulInteger`); no data needed.
- static: `quantize_static` in QDQ format with a `CalibrationDataReader` over training rows
  (MinMax calibration); only MatMul/Gemm are quantized so the sigmoid output stays float.

`deepspeed.compression` is deliberately not used (it is being removed upstream).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from torch import nn

from runtime.train.models import WithSigmoid

INPUT_NAME = "input"
OUTPUT_NAME = "probability"
QUANTIZED_OPS = ["MatMul", "Gemm"]


def io_spec(num_features: int) -> tuple[list[dict], list[dict]]:
    """Input and output tensor specs (KServe datatype names) as the artifact manifest records them."""
    inputs = [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, num_features]}]
    outputs = [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, 1]}]
    return inputs, outputs


@contextlib.contextmanager
def quiet_exporter():
    # The exporter warns about optional torchvision ops and deprecated pytree internals; neither
    # concerns an MLP, and the noise would hide our progress lines.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        registration.setLevel(level)


def export_onnx(logits_model: nn.Module, num_features: int, path: Path) -> Path:
    """Export `sigmoid(logits_model(input))` to `path` as FP32 ONNX with a dynamic batch axis.

    Uses the torch.export-based exporter (PyTorch's default). The exporter records shapes of
    initializers in `value_info`; those go stale once the quantizer transposes Gemm weights, so
    `value_info` is dropped (ONNX Runtime re-infers shapes). The model is checked with
    `onnx.checker` before returning.
    """
    model = WithSigmoid(logits_model).eval()
    sample = torch.zeros(2, num_features)  # batch 2: a batch of 1 would be specialized away
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model,
            (sample,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    del proto.graph.value_info[:]
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return Path(path)


class RowsReader(CalibrationDataReader):
    """Feeds rows of a float32 array to ONNX Runtime's calibrator, `batch_size` rows at a time."""

    def __init__(self, rows: np.ndarray, batch_size: int = 64):
        self._batches = [
            {INPUT_NAME: np.ascontiguousarray(rows[i : i + batch_size], dtype=np.float32)}
            for i in range(0, len(rows), batch_size)
        ]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def quantize(
    fp32_path: Path,
    int8_path: Path,
    *,
    mode: str,
    per_channel: bool,
    calibration_rows: np.ndarray | None = None,
    op_types: list[str] | None = None,
) -> Path:
    """Quantize the FP32 model at `fp32_path` to int8 at `int8_path`.

    Args:
        mode: "dynamic" or "static".
        per_channel: one weight scale per output unit.
        calibration_rows: float32 [n, d] rows for `static` (required there, ignored otherwise).
        op_types: operators to quantize (default MatMul and Gemm; language models add Gather,
            the embedding lookups).

    Raises:
        ValueError: unknown mode, or `static` without calibration rows.
    """
    # The quantizer logs a root-logger warning recommending `quant_pre_process`; its symbolic
    # shape inference and fusions add nothing to a Gemm/Relu chain, so the hint is muted.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        if mode == "dynamic":
            quantize_dynamic(
                str(fp32_path),
                str(int8_path),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                op_types_to_quantize=op_types or QUANTIZED_OPS,
            )
        elif mode == "static":
            if calibration_rows is None or len(calibration_rows) == 0:
                raise ValueError("static quantization needs calibration rows")
            quantize_static(
                str(fp32_path),
                str(int8_path),
                RowsReader(calibration_rows),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                op_types_to_quantize=QUANTIZED_OPS,
            )
        else:
            raise ValueError(f"quantization mode {mode!r} must be 'dynamic' or 'static'")
    finally:
        root.setLevel(level)
    onnx.checker.check_model(str(int8_path))
    return Path(int8_path)


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with `threads` intra-op threads and full graph optimization."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Probabilities [n] for rows `x`, in batches of `batch_size`."""
    out = []
    for i in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
        (prob,) = sess.run([OUTPUT_NAME], {INPUT_NAME: batch})
        out.append(prob.reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def int8_weight_count(path: Path) -> int:
    """Elements of the int8/uint8 weight tensors of an ONNX file (scalar zero points excluded)."""
    model = onnx.load(str(path))
    return sum(
        int(np.prod(t.dims))
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) > 0
    )
