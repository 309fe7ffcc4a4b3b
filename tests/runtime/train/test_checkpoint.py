"""Checkpoint commit protocol: verification, fallback to the newest good checkpoint, retention, crashes."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from runtime.train import checkpoint
from runtime.train.checkpoint import CheckpointError, find_latest_verified, prune, verify_checkpoint, write_manifest
from runtime.train.shm import buffer_path
from tests.runtime.conftest import SHORT_RUN, read_metrics, run_train


def make_tag(root, step, files=None):
    tag = root / f"global_step{step}"
    tag.mkdir(parents=True)
    for name, data in (files or {"a.pt": b"a" * 100, "rng/rank0.json": b"{}"}).items():
        (tag / name).parent.mkdir(parents=True, exist_ok=True)
        (tag / name).write_bytes(data)
    write_manifest(tag, step=step, world_size=2, zero_stage=2, config_digest="d")
    return tag


def test_manifest_round_trip_and_each_tampering_case(tmp_path):
    tag = make_tag(tmp_path, 5)
    assert verify_checkpoint(tag, world_size=2)["step"] == 5
    cases = {
        "truncated": lambda: (tag / "a.pt").write_bytes(b"a" * 50),
        "zero-byte": lambda: (tag / "a.pt").write_bytes(b""),
        "modified": lambda: (tag / "a.pt").write_bytes(b"b" * 100),
        "missing": lambda: (tag / "rng" / "rank0.json").unlink(),
        "extra": lambda: (tag / "b.pt").write_bytes(b"x"),
        "symlink": lambda: ((tag / "a.pt").unlink(), (tag / "a.pt").symlink_to(tmp_path / "elsewhere")),
        "no-manifest": lambda: (tag / "manifest.json").unlink(),
    }
    expected = {
        "truncated": "size 50 bytes, manifest says 100",
        "zero-byte": "size 0 bytes",
        "modified": "sha256 does not match",
        "missing": "rank0.json: missing",
        "extra": "files not in the manifest: b.pt",
        "symlink": "is a symlink",
        "no-manifest": "no manifest.json (save never committed)",
    }
    for name, tamper in cases.items():
        shutil.rmtree(tag)
        tag = make_tag(tmp_path, 5)
        (tmp_path / "elsewhere").write_bytes(b"a" * 100)
        tamper()
        with pytest.raises(CheckpointError, match=expected[name].replace("(", r"\(").replace(")", r"\)")):
            verify_checkpoint(tag)


def test_world_size_change_is_named(tmp_path):
    tag = make_tag(tmp_path, 5)
    with pytest.raises(CheckpointError, match="saved with world size 2, this run has 4; relaunch with --nproc 2"):
        verify_checkpoint(tag, world_size=4)


@pytest.mark.parametrize("damage", ["truncated", "zero-byte", "missing-manifest", "missing-rank-file"])
def test_damaged_newest_is_skipped_for_the_older_verified_one(zero_runs, tmp_path, damage):
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(zero_runs.get("z2-none") / "checkpoints", ckpt)
    newest = ckpt / "global_step12"
    optim = sorted(newest.glob("zero_pp_rank_*_optim_states.pt"))
    if damage == "truncated":
        optim[0].write_bytes(optim[0].read_bytes()[:-10])
    elif damage == "zero-byte":
        (newest / "mp_rank_00_model_states.pt").write_bytes(b"")
    elif damage == "missing-manifest":
        (newest / "manifest.json").unlink()
    else:
        optim[1].unlink()
    assert find_latest_verified(ckpt, world_size=2) == ckpt / "global_step6"
    for tag in ckpt.glob("global_step*"):
        (tag / "manifest.json").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="no verified checkpoint"):
        find_latest_verified(ckpt, world_size=2)


def test_retention_keeps_last_k_and_survives_a_failed_delete(tmp_path):
    for step in (1, 2, 3, 4):
        make_tag(tmp_path, step)
    (tmp_path / "global_step0").mkdir()  # an old partial save
    removed = prune(tmp_path, keep=2, newest=tmp_path / "global_step4")
    assert sorted(p.name for p in removed) == ["global_step0", "global_step1", "global_step2"]
    make_tag(tmp_path, 5)

    def failing_remove(path):
        raise PermissionError(f"injected: cannot delete {path}")

    assert prune(tmp_path, keep=1, newest=tmp_path / "global_step5", remove=failing_remove) == []
    assert find_latest_verified(tmp_path) == tmp_path / "global_step5"
    assert prune(tmp_path, keep=1, newest=tmp_path / "global_step5")  # a later prune succeeds
    assert [p.name for p in checkpoint.candidates(tmp_path)] == ["global_step5"]


def test_rng_state_round_trips_through_json():
    import random

    import numpy as np
    import torch

    state = json.loads(json.dumps(checkpoint.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.deepspeed
def test_sigkill_of_one_rank_during_a_save_keeps_the_previous_checkpoint(zero_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("STRATUS_FAILPOINT", "kill-during-save:1:12")
    monkeypatch.setenv("STRATUS_DIST_TIMEOUT_S", "30")
    result = run_train(tmp_path, "crash", *SHORT_RUN, timeout=300)
    assert result.returncode != 0
    # both ranks died before unlinking their shared-memory buffers; the launch removed them
    port = re.search(r"--master_port=(\d+)", result.stdout + result.stderr).group(1)
    assert not [p for p in (buffer_path("127.0.0.1", port, r) for r in (0, 1)) if p.exists()]
    ckpt = tmp_path / "crash" / "checkpoints"
    assert (ckpt / "latest").read_text() == "global_step6"
    assert (ckpt / "global_step12").is_dir() and not (ckpt / "global_step12" / "manifest.json").exists()
    assert find_latest_verified(ckpt, world_size=2) == ckpt / "global_step6"
    monkeypatch.delenv("STRATUS_FAILPOINT")
    again = run_train(tmp_path, "crash", *SHORT_RUN, args=("--resume",))
    assert again.returncode == 0, again.stdout[-3000:]
    assert "at step 6" in again.stdout
    assert (ckpt / "latest").read_text() == "global_step12"
    verify_checkpoint(ckpt / "global_step12", world_size=2)  # the stale partial tag did not block it


@pytest.mark.deepspeed
def test_sigterm_commits_a_checkpoint_and_a_relaunch_continues(preempted_run, tmp_path):
    returncode, out, run_dir = preempted_run
    assert returncode == 75, out[-3000:]
    shutil.copytree(run_dir, tmp_path / "pre")  # the session's copy stays as the signal left it
    ckpt = tmp_path / "pre" / "checkpoints"
    tag = (ckpt / "latest").read_text()
    stopped_at = verify_checkpoint(ckpt / tag, world_size=2)["step"]
    assert stopped_at >= 5 and stopped_at == int(read_metrics(tmp_path / "pre")[-1]["step"])
    result = run_train(
        tmp_path, "pre", "log_every=1", "data.num_samples=4000", f"max_steps={stopped_at + 3}", args=("--resume",)
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"at step {stopped_at}" in result.stdout
    assert [int(r["step"]) for r in read_metrics(tmp_path / "pre")][-3:] == [stopped_at + i for i in (1, 2, 3)]
