"""ONNX export (dynamic batch, names, FP32), int8 quantization (dynamic and static), metrics."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from runtime.export.evaluate import binary_metrics, evaluate_onnx, evaluate_torch, latency_table
from runtime.export.onnx_export import export_onnx, int8_weight_count, io_spec, predict, quantize, session
from runtime.export.prune import prune_structured
from runtime.train.config import ModelConfig
from runtime.train.models import build_mlp

D = 1000


@pytest.fixture(scope="module")
def trained():
    """A 1000 -> 100 -> 1 MLP fitted (quickly, plain torch) to a linearly separable task."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, D)).astype(np.float32)
    w = np.zeros(D, dtype=np.float32)
    w[:20] = 1.0
    y = (x @ w > 0).astype(np.float32)
    model = build_mlp(D, ModelConfig(hidden_sizes=(100,)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for step in range(150):
        idx = slice((step * 64) % 2048, (step * 64) % 2048 + 64)
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(xt[idx]).squeeze(-1), yt[idx]).backward()
        opt.step()
    return model.eval(), x, y


@pytest.fixture(scope="module")
def fp32_path(trained, tmp_path_factory):
    return export_onnx(trained[0], D, tmp_path_factory.mktemp("onnx") / "fp32.onnx")


def test_export_has_named_fp32_io_and_a_dynamic_batch_axis(trained, fp32_path):
    model, x, _ = trained
    graph = onnx.load(str(fp32_path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, out.name) == ("input", "probability")
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param and inp.type.tensor_type.shape.dim[1].dim_value == D
    sess = session(fp32_path)
    for batch in (1, 7, 64):
        with torch.no_grad():
            want = torch.sigmoid(model(torch.from_numpy(x[:batch]))).numpy().reshape(-1)
        np.testing.assert_allclose(predict(sess, x[:batch]), want, rtol=1e-5, atol=1e-6)
    assert io_spec(D) == (
        [{"name": "input", "datatype": "FP32", "shape": [-1, D]}],
        [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}],
    )


def test_dynamic_int8_is_about_a_quarter_of_fp32_and_keeps_accuracy(trained, fp32_path, tmp_path):
    model, x, y = trained
    int8 = quantize(fp32_path, tmp_path / "int8.onnx", mode="dynamic", per_channel=False)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert int8_weight_count(int8) == 100 * D + 100
    assert int8.stat().st_size < 0.27 * fp32_path.stat().st_size
    fp32_metrics = evaluate_torch(model, x, y)
    int8_metrics = evaluate_onnx(session(int8), x, y)
    assert fp32_metrics["accuracy"] > 80.0, "the fixture model did not learn; the test would be vacuous"
    assert abs(fp32_metrics["accuracy"] - int8_metrics["accuracy"]) <= 1.0


def test_static_int8_uses_calibration_rows_and_keeps_a_float_output(trained, fp32_path, tmp_path):
    model, x, y = trained
    int8 = quantize(fp32_path, tmp_path / "static.onnx", mode="static", per_channel=True, calibration_rows=x[:256])
    graph = onnx.load(str(int8)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert abs(evaluate_torch(model, x, y)["accuracy"] - evaluate_onnx(session(int8), x, y)["accuracy"]) <= 1.0
    with pytest.raises(ValueError, match="calibration rows"):
        quantize(fp32_path, tmp_path / "x.onnx", mode="static", per_channel=False)


def test_structured_pruning_shrinks_the_onnx_files(trained, fp32_path, tmp_path):
    pruned, _ = prune_structured(trained[0], 0.5)
    small = export_onnx(pruned, D, tmp_path / "pruned.onnx")
    assert small.stat().st_size < 0.55 * fp32_path.stat().st_size
    full_int8 = quantize(fp32_path, tmp_path / "full8.onnx", mode="dynamic", per_channel=False)
    small_int8 = quantize(small, tmp_path / "small8.onnx", mode="dynamic", per_channel=False)
    assert small_int8.stat().st_size < 0.55 * full_int8.stat().st_size
    assert int8_weight_count(small_int8) == 50 * D + 50


def test_binary_metrics_by_hand():
    prob = np.array([0.9, 0.2, 0.6, 0.4])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    got = binary_metrics(prob, y)
    assert got["accuracy"] == 50.0
    want = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.4)) / 4
    assert got["loss"] == pytest.approx(want)
    assert math.isfinite(binary_metrics(np.array([0.0, 1.0]), np.array([1.0, 0.0]))["loss"])
    with pytest.raises(ValueError, match="one probability per label"):
        binary_metrics(prob, y[:3])


def test_latency_table_has_every_runtime_at_both_batches(trained, fp32_path):
    table = latency_table(trained[0], {"ort_fp32": session(fp32_path)}, trained[1][:10], threads=1, iters=2)
    assert set(table) == {"batch_1", "batch_64"}
    assert all(set(v) == {"torch_fp32_eager", "ort_fp32"} and min(v.values()) > 0 for v in table.values())
