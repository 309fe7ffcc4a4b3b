"""Export end to end on real DeepSpeed checkpoints (2 CPU ranks, shared `zero_runs` from conftest).

Run as a script under DeepSpeed's launcher, this file is also the gather probe: it loads a
checkpoint into a live DeepSpeed engine with `engine.load_checkpoint` (DeepSpeed's restore path,
not `zero_to_fp32`), gathers the full parameters (`GatheredParameters` under ZeRO-3) and saves
them, so the consolidated weights can be compared with what a live model holds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from runtime.common.net import free_port
from runtime.contract import ExitCode
from runtime.train.command import encode_world_info
from runtime.train.shm import release_launch_buffers

pytestmark = pytest.mark.deepspeed

ROOT = Path(__file__).resolve().parents[2]
RUNS = {2: "z2-optimizer", 3: "z3-optimizer"}
FAST = {"finetune_steps": 60, "latency_iters": 3}


def _config(run_dir: Path, tmp_path: Path, **kw):
    from runtime.export.config import ExportConfig

    fields = {"out_dir": tmp_path / "export", "consolidated_dir": tmp_path / "consolidated", **FAST, **kw}
    return ExportConfig(run_dir=run_dir, **fields)


@pytest.fixture(scope="session")
def gathered(zero_runs, tmp_path_factory) -> dict[int, dict[str, torch.Tensor]]:
    """Live-engine weights of the newest checkpoint of each ZeRO run, gathered by the probe."""
    out = tmp_path_factory.mktemp("gathered")
    jobs = []
    for stage, run_id in RUNS.items():
        ckpt_dir = zero_runs.get(run_id) / "checkpoints"
        tag = (ckpt_dir / "latest").read_text().strip()
        jobs += [str(ckpt_dir), tag, str(out / f"z{stage}.safetensors")]
    port = free_port()
    cmd = [
        sys.executable,
        "-u",
        "-m",
        "deepspeed.launcher.launch",
        f"--world_info={encode_world_info(['localhost'], 2)}",
        "--node_rank=0",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(Path(__file__)),
        "gather",
        *jobs,
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    finally:  # the probe's ranks do not unlink their shared-memory buffers: remove them as stratus train does
        release_launch_buffers(port, 2)
    if result.returncode != 0:
        pytest.fail(f"gather probe failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {stage: load_file(str(out / f"z{stage}.safetensors")) for stage in RUNS}


@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
def test_consolidated_weights_equal_live_gathered_weights(zero_runs, gathered, stage, tmp_path):
    from runtime.export.consolidate import consolidate, load_consolidated, resolve_checkpoint, save_consolidated

    run_dir = zero_runs.get(RUNS[stage])
    result = consolidate(resolve_checkpoint(run_dir / "checkpoints", None))
    assert result.manifest["zero_stage"] == stage
    live = gathered[stage]
    assert sorted(result.state_dict) == sorted(live)
    for name, tensor in live.items():
        got = result.state_dict[name]
        assert got.dtype == torch.float32 and got.shape == tensor.shape, name
        assert torch.equal(got, tensor), f"{name}: max |diff| {(got - tensor).abs().max().item()}"
    saved = load_consolidated(save_consolidated(result, tmp_path))
    assert all(torch.equal(saved[k], live[k]) for k in live)


@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
def test_consolidated_model_scores_like_the_training_process(zero_runs, stage):
    """The training run's own end-of-run validation (live engine) matches the consolidated model."""
    from runtime.export.consolidate import consolidate, resolve_checkpoint
    from runtime.export.evaluate import evaluate_torch
    from runtime.train.data import load_dataset

    run_dir = zero_runs.get(RUNS[stage])
    summary = zero_runs.summary(RUNS[stage])
    result = consolidate(resolve_checkpoint(run_dir / "checkpoints", None))
    assert result.manifest["step"] == summary["steps"]
    data = load_dataset(result.config.data, result.config.seed)
    assert result.stats is not None  # trained on standardised rows: score it on the same rows
    metrics = evaluate_torch(result.build_model(), result.stats.apply(data.x)[data.val_idx], data.y[data.val_idx])
    assert metrics["accuracy"] == pytest.approx(100 * summary["val_accuracy"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(summary["val_loss"], abs=1e-5)


def test_export_stages_a_verified_int8_artifact_within_tolerance(zero_runs, tmp_path):
    from runtime.export.pipeline import run_export
    from runtime.repository.artifact import verify_artifact
    from runtime.repository.publish import read_latest

    repo = tmp_path / "repo"
    out = run_export(_config(zero_runs.get(RUNS[2]), tmp_path, publish=str(repo)))
    manifest = verify_artifact(out.out_dir)
    assert sorted(manifest["files"]) == ["model.onnx"]
    metrics = manifest["metrics"]
    drop = metrics["fp32"]["accuracy"] - metrics["exported"]["accuracy"]
    assert drop <= 1.0, metrics
    assert metrics["exported"]["precision"] == "int8"
    assert manifest["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1000]}]
    assert manifest["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]
    sizes = manifest["size_bytes"]
    assert sizes["int8_onnx"] == manifest["files"]["model.onnx"]["size"]
    assert sizes["int8_onnx"] < 0.27 * sizes["fp32_onnx"]  # int8 alone gives ~0.26; pruning halves it
    assert sizes["pruned_fp32_onnx"] < 0.55 * sizes["fp32_onnx"]
    assert manifest["compression"]["params_pruned"] == 1000 * 50 + 50 + 50 + 1 < manifest["compression"]["params_fp32"]
    layers = manifest["compression"]["layers"]
    assert [row["shape_after"] for row in layers] == [[50, 1000], [1, 50]]
    assert all(abs(row["weight_sparsity"] - 0.5) < 0.01 for row in layers)
    prov = manifest["provenance"]
    tag_dir = zero_runs.get(RUNS[2]) / "checkpoints" / prov["checkpoint_tag"]
    import hashlib

    assert prov["checkpoint_manifest_sha256"] == hashlib.sha256((tag_dir / "manifest.json").read_bytes()).hexdigest()
    assert prov["config_digest"] == json.loads((tag_dir / "manifest.json").read_text())["config_digest"]
    assert set(manifest["versions"]) >= {"torch", "onnxruntime", "onnx"}
    assert set(manifest["latency_ms"]["batch_64"]) == {"torch_fp32_eager", "ort_fp32", "ort_int8"}
    assert out.version == 1 and read_latest(str(repo), "mlp-binary") == 1


@pytest.mark.parametrize(
    "settings", [{"tolerance": -100.0}, {"sparsity": 0.995, "finetune_steps": 0}], ids=["tolerance", "sparsity"]
)
def test_gate_failure_writes_and_publishes_nothing(zero_runs, tmp_path, settings, caplog):
    from runtime.export.command import main
    from runtime.repository.publish import read_latest

    run_dir = zero_runs.get(RUNS[2])
    out, repo = tmp_path / "export", tmp_path / "repo"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "stratus-model/1", "files": {}}))
    before = (out / "manifest.json").read_bytes()
    argv = [
        "--run-dir",
        str(run_dir),
        "--out",
        str(out),
        "--consolidated-dir",
        str(tmp_path / "c"),
        "--publish",
        str(repo),
        "--latency-iters",
        "2",
        "--finetune-steps",
        "60",
    ]
    for key, value in settings.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert main(argv) == ExitCode.GATE_FAILED
    assert [p.name for p in out.iterdir()] == ["manifest.json"] and (out / "manifest.json").read_bytes() == before
    assert read_latest(str(repo), "mlp-binary") is None
    assert not any(p.name.startswith(".export.") for p in tmp_path.iterdir()), "staging dir left behind"


def test_tampered_checkpoint_is_refused_before_unpickling(zero_runs, tmp_path, monkeypatch):
    from runtime.export import consolidate as consolidate_module
    from runtime.export.config import ExportError
    from runtime.export.consolidate import consolidate

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint file was opened before its manifest verified")

    monkeypatch.setattr(consolidate_module, "_zero_to_fp32", no_unpickling)
    monkeypatch.setattr(consolidate_module, "_stage0_module", no_unpickling)

    src = zero_runs.get(RUNS[2]) / "checkpoints"
    tag = (src / "latest").read_text().strip()
    tag_dir = tmp_path / "checkpoints" / tag
    shutil.copytree(src / tag, tag_dir)
    shard = tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    hostile = b"\x80\x04cos\nsystem\n"  # a pickle GLOBAL for os.system, same file size
    shard.write_bytes(hostile + shard.read_bytes()[len(hostile) :])
    with pytest.raises(ExportError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt: sha256"):
        consolidate(tag_dir)


def test_unknown_tag_names_the_committed_ones(zero_runs, tmp_path):
    from runtime.export.command import main

    run_dir = zero_runs.get(RUNS[2])
    code = main(["--run-dir", str(run_dir), "--checkpoint", "global_step999", "--out", str(tmp_path / "o")])
    assert code == ExitCode.BAD_INPUT
    assert not (tmp_path / "o").exists()


def _gather_main(args: list[str]) -> None:
    """Probe body: for each (checkpoint dir, tag, output), load into an engine and gather."""
    import deepspeed
    from safetensors.torch import save_file

    from runtime.train.deepspeed_config import deepspeed_config
    from runtime.train.loading import config_from_dict
    from runtime.train.models import build_mlp

    deepspeed.init_distributed(dist_backend="gloo")
    for ckpt_dir, tag, out in zip(args[0::3], args[1::3], args[2::3], strict=True):
        cfg = config_from_dict(json.loads((Path(ckpt_dir) / tag / "train_config.json").read_text()))
        model = build_mlp(cfg.data.num_features, cfg.model)
        ds = deepspeed_config(cfg, world_size=2, device="cpu")
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
        path, _ = engine.load_checkpoint(ckpt_dir, tag=tag, load_module_strict=True)
        assert path is not None, f"DeepSpeed could not load {ckpt_dir}/{tag}"
        params = list(engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            state = {name: p.detach().clone().float().contiguous() for name, p in params}
        if torch.distributed.get_rank() == 0:
            save_file(state, out)
        torch.distributed.barrier()
    # As runtime.train.loop.run does: a rank that reaches interpreter exit while its peer is still
    # inside gloo can abort ("terminate called without an active exception").
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    if argv[:1] == ["gather"]:
        _gather_main(argv[1:])
        # The work is done and the files closed: end as `python -m runtime.train` does, without the
        # interpreter's teardown, where a rank still aborted now and then (signal 6, "terminate
        # called without an active exception") after both outputs were written.
        from runtime.common.log import exit_now

        exit_now(0)
