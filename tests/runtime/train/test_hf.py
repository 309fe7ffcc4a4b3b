"""hf-causal-lm fine-tuned for real: the tiny Llama on 2 ranks under ZeRO-3 (the `hf_run` session
fixture), its checkpoint consolidated back into a Hugging Face model."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from runtime.checkpoint.local import MANIFEST
from runtime.export import consolidate
from runtime.export.hf.hfdir import merged_model, save_hf_dir
from runtime.train.families import family_of
from runtime.train.hf import model as hf_model
from tests.runtime.conftest import read_metrics


def test_zero3_fine_tune_reports_tokens_mfu_and_perplexity(hf_run):
    summary = json.loads((hf_run / "summary.json").read_text())
    assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1
    assert math.isfinite(summary["val_perplexity"]) and 1 < summary["val_perplexity"] < 2048
    held = summary["params_held_per_rank"]
    assert len(held) == 2 and abs(held[0] - held[1]) <= 0.1 * max(held)
    assert sum(held) <= summary["num_parameters"] * 1.05  # partitioned: nobody holds it all
    rows = read_metrics(hf_run)
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    assert losses[-1] < losses[0], losses
    assert any(r.get("val_perplexity") for r in rows)


def test_checkpoint_is_self_contained_for_export(hf_run, tiny_llama_dir):
    tag_dir = max((hf_run / "checkpoints").glob("global_step*"))
    files = json.loads((tag_dir / MANIFEST).read_text())["files"]
    for name in ("hf/config.json", "hf/tokenizer.json", "hf/tokenizer_config.json"):
        assert name in files, name
        assert (tag_dir / name).read_bytes() == (tiny_llama_dir / name.removeprefix("hf/")).read_bytes()


def test_consolidated_weights_give_the_perplexity_training_measured(hf_run, tiny_llama_dir, tmp_path):
    ckpt = consolidate.load(hf_run / "checkpoints", None)
    assert type(ckpt.model).__name__ == "LlamaForCausalLM"
    base = hf_model.load_for_training(tiny_llama_dir, ckpt.config.model, {}, torch.float32)[0]
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, ckpt.state_dict[k])]
    assert changed, "fine-tuning changed no weight"
    task = family_of(ckpt.config).task(ckpt.config)
    data = task.load_data()
    idx = task.val_indices(data)
    x, y = torch.from_numpy(data.x[idx]), torch.from_numpy(data.y[idx])
    with torch.no_grad():
        loss_sum, _, count = task.eval_sums(ckpt.model, x, y, "cpu", torch.float32)
    summary = json.loads((hf_run / "summary.json").read_text())
    assert np.isclose(math.exp(loss_sum / count), summary["val_perplexity"], rtol=1e-3)
    out = save_hf_dir(merged_model(ckpt.model), ckpt.tag_dir / "hf", tmp_path / "hf")
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
