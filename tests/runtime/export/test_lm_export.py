"""Export of a GPT trained under ZeRO-3 (the session's `gpt_run`): ONNX with dynamic axes, int8, the gate.

Documented tolerance of the int8 model (docs/design.md, "Exporting language models"): on
validation text its logits differ from the fp32 model's by at most 2% of the fp32 logits'
standard deviation on average, the most likely next token agrees at >= 95% of positions, and the
validation perplexity is within the gate's 5%.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.export import onnx_export
from runtime.export.config import GateError
from runtime.export.consolidate import load
from runtime.export.lm import gate, logit_agreement, onnx_logits, prune_ffn
from runtime.train.config import ModelConfig
from runtime.train.gpt import build_gpt
from runtime.train.text import load_text_dataset

MEAN_ABS_DIFF_REL = 0.02
TOP1_AGREEMENT = 0.95


def test_ffn_pruning_removes_hidden_units_of_every_block():
    model = build_gpt(ModelConfig(kind="gpt", num_layers=2, num_heads=2, embed_dim=16, seq_len=8)).eval()
    pruned = prune_ffn(model, 0.25)
    assert [b.ffn.fc.out_features for b in pruned.blocks] == [48, 48]
    assert [b.ffn.proj.in_features for b in pruned.blocks] == [48, 48]
    ids = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        assert torch.equal(prune_ffn(model, 0.0)(ids), model(ids))
        assert pruned(ids).shape == model(ids).shape


def test_gate_refuses_a_perplexity_increase_beyond_tolerance():
    assert gate(10.0, 10.4, 5.0) == pytest.approx(4.0)
    with pytest.raises(GateError, match=r"perplexity fp32 10.000 -> int8 10.600 \(\+6.00% > tolerance 5%\)"):
        gate(10.0, 10.6, 5.0)


@pytest.mark.deepspeed
def test_gpt_export_passes_its_gate_with_dynamic_axes_and_int8_logits_within_tolerance(gpt_run, gpt_export):
    result, _ = gpt_export
    manifest = result.manifest
    assert manifest["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}]
    assert manifest["outputs"][0]["shape"] == [-1, -1, 257]
    assert manifest["serving_extension"] == "generate" and manifest["language_model"]["vocab_size"] == 257
    metrics = manifest["metrics"]
    assert metrics["perplexity_increase_percent"] <= 5.0
    assert manifest["size_bytes"]["int8_vs_fp32_onnx"] <= 0.35
    ckpt = load(gpt_run / "checkpoints", None)
    data = load_text_dataset(ckpt.config.data, ckpt.config.model.seq_len, ckpt.config.seed)
    sess = onnx_export.session(result.out_dir / "model.onnx")
    for batch, seq in ((1, 5), (3, 37), (2, 128)):  # any batch, any length up to the context
        ids = data.x[data.val_idx[:batch], :seq]
        with torch.no_grad():
            reference = ckpt.build_model()(torch.from_numpy(ids)).numpy()
        agreement = logit_agreement(reference, onnx_logits(sess, ids))
        assert agreement["mean_abs_diff_rel"] <= MEAN_ABS_DIFF_REL, (batch, seq, agreement)
        assert agreement["top1_agreement"] >= TOP1_AGREEMENT, (batch, seq, agreement)
    assert np.isfinite(metrics["exported"]["perplexity"]) and metrics["exported"]["perplexity"] > 1
