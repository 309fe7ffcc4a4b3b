"""The checkpoint files on disk (`runtime.checkpoint.local`): manifest, verification and each
tampering case, world size, retention, the new-run refusal; RNG state as JSON (`commit`)."""

from __future__ import annotations

import json
import shutil

import pytest

from runtime.checkpoint import commit, local
from runtime.checkpoint.local import (
    CheckpointError,
    existing_run_problem,
    find_latest_verified,
    prune,
    verify_checkpoint,
    write_manifest,
)


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
    assert [p.name for p in local.candidates(tmp_path)] == ["global_step5"]


def test_rng_state_round_trips_through_json():
    import random

    import numpy as np
    import torch

    state = json.loads(json.dumps(commit.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    commit.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_new_run_is_refused_only_where_checkpoints_exist(tmp_path):
    assert existing_run_problem(tmp_path / "checkpoints", "r") is None
    make_tag(tmp_path / "checkpoints", 3)
    problem = existing_run_problem(tmp_path / "checkpoints", "r")
    assert "run 'r' already has checkpoints in" in problem and "--resume" in problem


def test_the_commit_hooks_do_nothing_unless_a_test_sets_them():
    assert commit.HOOKS.after_shards(0, 1) is None  # the product's default: no failpoint
