"""Checkpoint commit protocol under DeepSpeed: fallback to the newest good checkpoint, crashes, preemption.

The file-level protocol (manifest, tampering, retention, RNG state) is tested in
tests/runtime/checkpoint/test_local.py.
"""

from __future__ import annotations

import re
import shutil

import pytest

from runtime.checkpoint.local import CheckpointError, find_latest_verified, verify_checkpoint
from runtime.train.shm import buffer_path
from tests.runtime.conftest import SHORT_RUN, read_metrics, run_train


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


@pytest.mark.deepspeed
def test_sigkill_of_one_rank_during_a_save_keeps_the_previous_checkpoint(zero_runs, tmp_path, monkeypatch):
    # The failpoint is a hook the test entry injects into the ranks (runtime.checkpoint.commit.HOOKS);
    # the process-group timeout is a node knob (NodeEnv.dist_timeout_s), shortened here.
    monkeypatch.setenv("STRATUS_DIST_TIMEOUT_S", "30")
    failpoint = ("tests.runtime.train.failpoint", "kill-during-save:1:12")
    result = run_train(tmp_path, "crash", *SHORT_RUN, timeout=300, entry=failpoint)
    assert result.returncode != 0
    # both ranks died before unlinking their shared-memory buffers; the launch removed them
    port = re.search(r"--master_port=(\d+)", result.stdout + result.stderr).group(1)
    assert not [p for p in (buffer_path("127.0.0.1", port, r) for r in (0, 1)) if p.exists()]
    ckpt = tmp_path / "crash" / "checkpoints"
    assert (ckpt / "latest").is_file(), result.stdout[-3000:] + result.stderr[-5000:]
    assert (ckpt / "latest").read_text() == "global_step6"
    assert (ckpt / "global_step12").is_dir() and not (ckpt / "global_step12" / "manifest.json").exists()
    assert find_latest_verified(ckpt, world_size=2) == ckpt / "global_step6"
    again = run_train(tmp_path, "crash", *SHORT_RUN, args=("--resume",))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
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
