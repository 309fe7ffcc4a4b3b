"""Tabular data on very different scales: standardised training, stats folded into the export.

One real 2-rank DeepSpeed run on a CSV whose columns span 1e-3 to 1e4 (and one constant column),
compared with a logistic regression (numpy, Newton's method) fitted on the same training split;
then the export, and a real server on 127.0.0.1 given raw rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from runtime.export import onnx_export
from runtime.export.config import ExportConfig
from runtime.export.consolidate import load
from runtime.export.families.mlp import raw_input_model
from runtime.export.pipeline import run_export
from runtime.train.config import DataConfig
from runtime.train.data import load_dataset
from runtime.train.tabular import FeatureStats
from tests.runtime.conftest import read_metrics, run_train
from tests.runtime.export.serving import serving

pytestmark = pytest.mark.deepspeed

SEED = 1234  # the training config's default seed decides the split
INT8_PROB_ATOL = 0.02  # documented in docs/design.md (int8 export of a tabular model)


def write_scaled_csv(path, n: int = 4000) -> None:
    rng = np.random.default_rng(0)
    cols = {
        "income": rng.normal(50_000, 15_000, n),
        "ratio": rng.normal(0.002, 0.0005, n),
        "share": rng.uniform(0, 1, n),
        "version": np.full(n, 42.0),
        "delta": rng.normal(-300, 100, n),
        "noise": rng.normal(0, 1e4, n),
    }
    z = {k: (v - v.mean()) / (v.std() or 1.0) for k, v in cols.items()}
    logit = 3.0 * (1.2 * z["income"] - 1.5 * z["ratio"] + 1.0 * z["share"] + 0.8 * z["delta"])
    label = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-logit))).astype(int)
    rows = np.column_stack([*cols.values(), label])
    header = ",".join([*cols, "label"])
    np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.8g")


def logistic_regression_accuracy(x_train, y_train, x_val, y_val) -> float:
    """Validation accuracy (%) of an L2-regularised (1e-6) logistic regression, Newton's method."""
    stats = FeatureStats.fit(x_train)
    a, b = (np.column_stack([stats.apply(x).astype(np.float64), np.ones(len(x))]) for x in (x_train, x_val))
    w = np.zeros(a.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-a @ w))
        hessian = a.T @ (a * (p * (1 - p))[:, None]) + 1e-6 * np.eye(len(w))
        w -= np.linalg.solve(hessian, a.T @ (p - y_train) + 1e-6 * w)
    return 100.0 * float(np.mean(((b @ w) > 0) == (y_val > 0.5)))


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabular")
    csv = root / "scaled.csv"
    write_scaled_csv(csv)
    result = run_train(root, "tab", "epochs=3", "log_every=20", "checkpoint_every=100000", args=("--data", str(csv)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, csv, root / "tab"


def test_scaled_csv_trains_stably_to_logistic_regression_accuracy(tabular_run):
    _, csv, run_dir = tabular_run
    data = load_dataset(DataConfig(source=str(csv)), SEED)
    x_tr, y_tr, x_va, y_va = data.x[data.train_idx], data.y[data.train_idx], data.x[data.val_idx], data.y[data.val_idx]
    reference = logistic_regression_accuracy(x_tr, y_tr, x_va, y_va)
    rows = read_metrics(run_dir)
    epoch_acc = [100 * float(r["val_accuracy"]) for r in rows if r["val_accuracy"]]
    assert len(epoch_acc) == 3
    assert epoch_acc[-1] >= reference - 1.0, (epoch_acc, reference)
    assert min(epoch_acc) >= reference - 2.5, (epoch_acc, reference)  # no epoch-to-epoch swings
    assert float(rows[0]["loss"]) < 0.8  # the mean of the first 20 steps; unscaled inputs start near 16
    stats = FeatureStats.from_json((run_dir / "checkpoints" / "global_step300" / "feature_stats.json").read_text())
    assert stats.constant_columns == (3,)
    np.testing.assert_allclose(stats.mean, x_tr.astype(np.float64).mean(axis=0), rtol=1e-9)


def test_exported_and_served_model_take_raw_rows(tabular_run, tmp_path):
    root, csv, run_dir = tabular_run
    repo = tmp_path / "repo"
    cfg = ExportConfig(
        run_dir=run_dir,
        out_dir=tmp_path / "export",
        structured_fraction=0.0,
        sparsity=0.0,
        finetune_steps=0,
        latency_iters=3,
        publish=str(repo),
        model_name="scaled",
    )
    result = run_export(cfg)
    assert result.manifest["compression"]["preprocessing"]["constant_columns"] == [3]
    ckpt = load(run_dir / "checkpoints", None)
    data = load_dataset(DataConfig(source=str(csv)), SEED)
    raw = data.x[data.val_idx][:64]
    with torch.no_grad():  # the fp32 model on standardised rows: the reference
        expected = torch.sigmoid(ckpt.build_model()(torch.from_numpy(ckpt.stats.apply(raw)))).numpy().reshape(-1)
    fp32_onnx = onnx_export.export_onnx(
        raw_input_model(ckpt.build_model(), ckpt.stats), raw.shape[1], tmp_path / "f.onnx"
    )
    np.testing.assert_allclose(onnx_export.predict(onnx_export.session(fp32_onnx), raw), expected, atol=1e-5)
    with serving(repo, "scaled", tmp_path) as server:
        body = server.infer(
            [{"name": "input", "shape": list(raw.shape), "datatype": "FP32", "data": raw.reshape(-1).tolist()}]
        )
    served = np.asarray(body["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_allclose(served, expected, atol=INT8_PROB_ATOL)
    assert np.mean((served >= 0.5) == (expected >= 0.5)) >= 0.98
    manifest = json.loads((repo / "scaled" / "1" / "manifest.json").read_text())
    assert manifest["compression"]["preprocessing"]["standardize"] is True
