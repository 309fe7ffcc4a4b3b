"""The export pipeline without DeepSpeed processes: a ZeRO-0 checkpoint in DeepSpeed's layout
(`mp_rank_00_model_states.pt` + a stratus manifest), settings validation, the gate, staging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runtime.checkpoint import local as checkpoint
from runtime.common.options import parser_for
from runtime.export.command import main
from runtime.export.config import ExportConfig, ExportError, GateError
from runtime.export.consolidate import consolidate, resolve_checkpoint
from runtime.export.evaluate import gate
from runtime.export.pipeline import run_export
from runtime.export.stage import check_out_dir
from runtime.repository.artifact import ArtifactError, verify_artifact
from runtime.train.config import config_digest
from runtime.train.data import load_dataset
from runtime.train.loading import load_config
from runtime.train.models import build_mlp

SETS = ["parallel.zero_stage=0", "parallel.offload=none", "data.num_samples=1200"]


def make_stage0_run(root: Path, *sets: str, steps: int = 60) -> tuple[Path, dict[str, torch.Tensor]]:
    """Fit the preset briefly with plain torch and commit it like runtime.train does at ZeRO-0."""
    cfg = load_config("mlp-binary", overrides=[*SETS, *sets])
    data = load_dataset(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_mlp(1000, cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    x, y = torch.from_numpy(data.x[data.train_idx]), torch.from_numpy(data.y[data.train_idx])
    for step in range(steps if data.num_features == 1000 else 0):  # else: a mismatched-width case
        idx = slice(step * 16 % len(x), step * 16 % len(x) + 16)
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx]).squeeze(-1), y[idx]).backward()
        opt.step()
    ckpt_dir = root / "checkpoints"
    tag_dir = ckpt_dir / checkpoint.tag_for(steps)
    tag_dir.mkdir(parents=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"module": state, "ds_version": "0.19.8", "global_steps": steps}, tag_dir / "mp_rank_00_model_states.pt")
    (tag_dir / checkpoint.CONFIG).write_text(json.dumps(cfg.to_dict()))
    checkpoint.write_manifest(tag_dir, step=steps, world_size=2, zero_stage=0, config_digest=cfg.digest())
    (ckpt_dir / checkpoint.LATEST).write_text(tag_dir.name)
    return root, state


@pytest.fixture(scope="module")
def stage0_run(tmp_path_factory):
    return make_stage0_run(tmp_path_factory.mktemp("stage0-run"))


def _cfg(run_dir: Path, tmp_path: Path, **kw) -> ExportConfig:
    defaults = {
        "out_dir": tmp_path / "export",
        "consolidated_dir": tmp_path / "c",
        "finetune_steps": 40,
        "latency_iters": 2,
    }
    return ExportConfig(run_dir=run_dir, **{**defaults, **kw})


def test_zero0_checkpoint_consolidates_from_the_module_weights(stage0_run):
    run_dir, state = stage0_run
    result = consolidate(resolve_checkpoint(run_dir / "checkpoints", None))
    assert result.tag == "global_step60" and result.manifest["zero_stage"] == 0
    assert sorted(result.state_dict) == sorted(state)
    assert all(torch.equal(result.state_dict[k], state[k]) for k in state)


def test_config_that_does_not_match_the_manifest_digest_is_refused(tmp_path):
    run_dir, _ = make_stage0_run(tmp_path / "run", steps=2)
    tag_dir = run_dir / "checkpoints" / "global_step2"
    manifest = json.loads((tag_dir / "manifest.json").read_text())
    cfg = json.loads((tag_dir / "train_config.json").read_text())
    cfg["epochs"] = 99
    (tag_dir / "train_config.json").write_text(json.dumps(cfg))
    checkpoint.write_manifest(tag_dir, step=2, world_size=2, zero_stage=0, config_digest=manifest["config_digest"])
    with pytest.raises(ExportError, match="config digest"):
        consolidate(tag_dir)


def test_checkpoint_of_an_older_version_without_a_newer_config_field_still_consolidates(tmp_path):
    """A field added to the config since the run was written gets its default; the digest is
    checked over the config as stored, so older checkpoints stay exportable."""
    run_dir, state = make_stage0_run(tmp_path / "run", steps=2)
    tag_dir = run_dir / "checkpoints" / "global_step2"
    stored = json.loads((tag_dir / "train_config.json").read_text())
    assert stored["data"].pop("standardize") is True  # as if written before the field existed
    (tag_dir / "train_config.json").write_text(json.dumps(stored))
    checkpoint.write_manifest(tag_dir, step=2, world_size=2, zero_stage=0, config_digest=config_digest(stored))
    result = consolidate(tag_dir)
    assert result.config.data.standardize is True and result.stats is None
    assert all(torch.equal(result.state_dict[k], state[k]) for k in state)


def test_export_stages_only_the_model_and_manifest_and_replaces_a_previous_export(stage0_run, tmp_path):
    run_dir, _ = stage0_run
    first = run_export(_cfg(run_dir, tmp_path))
    out = first.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    manifest = verify_artifact(out)
    assert manifest["model_name"] == "mlp-binary" and manifest["provenance"]["zero_stage"] == 0
    assert manifest["serving_extension"] is None  # the mlp family needs the standard routes only
    assert (tmp_path / "c" / "global_step60.safetensors").is_file()
    second = run_export(_cfg(run_dir, tmp_path, structured_fraction=0.75, sparsity=0.0, model_name="small"))
    manifest = verify_artifact(second.out_dir)
    assert manifest["model_name"] == "small"
    assert manifest["compression"]["layers"][0]["shape_after"] == [25, 1000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "export"], "staging leftovers"


def test_failed_staging_leaves_the_previous_export_untouched(stage0_run, tmp_path, monkeypatch):
    run_dir, _ = stage0_run
    out = run_export(_cfg(run_dir, tmp_path)).out_dir
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(version_dir, info):
        (Path(version_dir) / "manifest.json").write_text("half")
        raise ArtifactError("disk full (injected)")

    monkeypatch.setattr("runtime.export.stage.write_manifest", broken)
    with pytest.raises(ArtifactError, match="injected"):
        run_export(_cfg(run_dir, tmp_path))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "export"]


def test_out_dir_with_foreign_files_is_refused_before_any_work(stage0_run, tmp_path):
    run_dir, _ = stage0_run
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a previous export"):
        run_export(_cfg(run_dir, tmp_path, out_dir=tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "c").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        check_out_dir(tmp_path / "file")


def test_bad_model_name_is_refused_before_anything_is_written(stage0_run, tmp_path):
    run_dir, _ = stage0_run
    cfg = _cfg(run_dir, tmp_path, model_name="not a/name", publish=str(tmp_path / "repo"))
    with pytest.raises(ExportError, match="^--model-name"):
        run_export(cfg)
    assert not (tmp_path / "c").exists() and not (tmp_path / "export").exists() and not (tmp_path / "repo").exists()


def test_data_width_different_from_the_checkpoint_is_a_clear_error(tmp_path):
    run_dir, _ = make_stage0_run(tmp_path / "run", "data.num_features=500", steps=2)
    with pytest.raises(ExportError, match="500 features but checkpoint global_step2 was trained on 1000"):
        run_export(_cfg(run_dir, tmp_path))


def test_gate_message_shows_both_numbers():
    assert gate(97.5, 97.0, 1.0) == pytest.approx(0.5)
    with pytest.raises(GateError, match=r"fp32 97\.50% -> int8 95\.25% \(drop 2\.25 points > tolerance 1\)"):
        gate(97.5, 95.25, 1.0)
    with pytest.raises(GateError):
        gate(90.0, 90.0, -0.5)


def test_missing_run_and_tag_errors_say_what_to_pass(tmp_path):
    with pytest.raises(ExportError, match="pass --run-dir of a trained run"):
        resolve_checkpoint(tmp_path / "nope", None)
    (tmp_path / "ck" / "global_step5").mkdir(parents=True)
    with pytest.raises(ExportError, match="no verified checkpoint.*no manifest.json"):
        resolve_checkpoint(tmp_path / "ck", None)
    with pytest.raises(ExportError, match=r"--checkpoint '\.\./x'"):
        resolve_checkpoint(tmp_path / "ck", "../x")


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("sparsity", 1.0, "--sparsity"),
        ("structured_fraction", -0.1, "--structured-fraction"),
        ("finetune_steps", -1, "--finetune-steps"),
        ("quantization", "fp16", "--quantization"),
        ("calibration_rows", 0, "--calibration-rows"),
        ("tolerance", 150.0, "--tolerance"),
        ("latency_threads", 0, "--latency-threads"),
        ("kms_key_id", "arn:aws:kms:k", "--kms-key-id"),
    ],
)
def test_bad_settings_name_the_flag(field, value, flag):
    with pytest.raises(ExportError, match=f"^{flag} "):
        ExportConfig(run_dir=Path("runs/x"), **{field: value})


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in parser_for(ExportConfig, prog="stratus export")._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, f"{action.option_strings} has no help"
    for word in ("sparsity", "structured", "fine-tune", "quantiz", "tolerance", "Exit codes"):
        assert word in text
