"""GPT presets: byte tokens, packed text data, the model, FLOP accounting, and a real ZeRO-3 run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from runtime.common.tokens import EOT, VOCAB_SIZE, StreamDecoder, decode, encode
from runtime.train.config import ConfigError, DataConfig, ModelConfig
from runtime.train.data import DataError
from runtime.train.deepspeed_config import resolve_precision
from runtime.train.gpt import build_gpt, flops_per_token
from runtime.train.loading import load_config
from runtime.train.models import count_parameters
from runtime.train.text import load_text_dataset, pack, read_documents, stdlib_files
from tests.runtime.conftest import read_metrics


def test_byte_tokens_round_trip_any_text_and_stream_split_characters():
    text = "def f(x):\n    return 'héllo ✓'\n"
    ids = encode(text)
    assert max(ids) < 256 and decode(ids + [EOT]) == text
    dec = StreamDecoder()
    pieces = [dec.feed([i]) for i in encode("✓é")]  # multi-byte characters arrive one byte at a time
    assert "".join(pieces) + dec.flush() == "✓é" and pieces[0] == ""
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        decode([VOCAB_SIZE])


def test_pack_makes_next_token_windows():
    windows = pack(np.arange(10), seq_len=3)
    assert windows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]


def test_text_directory_and_jsonl_sources(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("second " * 200)
    (tmp_path / "d" / "a.txt").write_text("first " * 200)
    docs = read_documents(DataConfig(source=str(tmp_path / "d")))
    assert docs[0].startswith("first") and docs[1].startswith("second")
    data = load_text_dataset(DataConfig(source=str(tmp_path / "d"), val_fraction=0.2), seq_len=16, seed=0)
    assert data.x.shape[1] == 17 and len(data.val_idx) >= 1
    assert set(data.train_idx).isdisjoint(data.val_idx)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"body": "x" * 100}) + "\n" + json.dumps({"text": "y", "body": "z"}) + "\n")
    with pytest.raises(DataError, match=r"c.jsonl: line 1 has no string field 'text'; set data.text_field"):
        read_documents(DataConfig(source=str(jsonl)))
    assert read_documents(DataConfig(source=str(jsonl), text_field="body")) == ["x" * 100, "z"]


def test_builtin_corpus_is_the_standard_library_found_at_run_time():
    files = stdlib_files()
    assert any(f.name == "os.py" for f in files) and not any("site-packages" in str(f) for f in files)
    docs = read_documents(DataConfig(source="builtin:python-stdlib", max_bytes=50_000))
    assert 0 < sum(map(len, docs)) <= 50_000


def test_gpt_is_causal_and_presets_have_the_documented_sizes():
    cfg = ModelConfig(kind="gpt", num_layers=2, num_heads=2, embed_dim=32, seq_len=16)
    model = build_gpt(cfg).eval()
    ids = torch.randint(0, 256, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 16, VOCAB_SIZE)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5) and not torch.allclose(a[:, 10:], b[:, 10:])
    sizes = {name: count_parameters(build_gpt(load_config(name).model)) for name in ("gpt-tiny", "gpt-small")}
    assert 0.7e6 <= sizes["gpt-tiny"] <= 1.2e6 and 30e6 <= sizes["gpt-small"] <= 50e6, sizes
    assert flops_per_token(load_config("gpt-small").model) > 6 * 30e6


def test_bf16_is_refused_on_cpus_without_bf16_instructions():
    cfg = load_config("gpt-tiny", overrides=["parallel.precision=bf16"])
    with pytest.raises(ConfigError, match="no bf16 instructions .* use parallel.precision=fp32"):
        resolve_precision(cfg, "cpu", cpuinfo="flags\t: fpu avx2 avx512f\n")
    assert resolve_precision(cfg, "cpu", cpuinfo="flags\t: avx2 avx512_bf16\n") == "bf16"
    assert resolve_precision(load_config("gpt-tiny"), "cpu") == "fp32"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.source=data.csv"], "model.kind=gpt reads text"),
        (["model.embed_dim=100", "model.num_heads=3"], "multiple of model.num_heads"),
    ],
)
def test_gpt_config_errors_name_the_fix(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("gpt-tiny", overrides=overrides)


@pytest.mark.deepspeed
def test_gpt_tiny_trains_under_zero3_with_full_offload_and_loss_falls(gpt_run):
    rows = read_metrics(gpt_run)
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    assert losses[0] > math.log(VOCAB_SIZE) - 1.5  # it starts near uniform over 257 tokens
    summary = json.loads((gpt_run / "summary.json").read_text())
    assert (summary["zero_stage"], summary["offload"], summary["world_size"]) == (3, "all", 2)
    total, held = summary["num_parameters"], summary["params_held_per_rank"]
    assert all(0.45 * total <= h <= 0.55 * total for h in held), (total, held)
    assert 1.0 < summary["val_perplexity"] < math.exp(losses[0])
    assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1 and summary["matmul_peak_flops"] > 1e9
    assert all(float(r["mfu"]) > 0 for r in rows) and [r["val_perplexity"] != "" for r in rows].count(True) == 2
    assert (gpt_run / "training.png").stat().st_size > 1000


def test_text_from_an_s3_prefix_and_a_jsonl_object(aws_env):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="corpus")
    s3.put_object(Bucket="corpus", Key="books/b.txt", Body=b"beta " * 100)
    s3.put_object(Bucket="corpus", Key="books/a.txt", Body=b"alpha " * 100)
    s3.put_object(Bucket="corpus", Key="other.jsonl", Body=b'{"text": "gamma"}\n{"text": "delta"}\n')
    docs = read_documents(DataConfig(source="s3://corpus/books/"))
    assert [d[:5] for d in docs] == ["alpha", "beta "]
    assert read_documents(DataConfig(source="s3://corpus/other.jsonl")) == ["gamma", "delta"]
    with pytest.raises(DataError, match="s3://nope/x/: cannot read"):
        read_documents(DataConfig(source="s3://nope/x/"))
