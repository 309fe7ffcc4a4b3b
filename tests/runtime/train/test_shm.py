"""DeepSpeed's CPU shared-memory all-reduce buffers are removed when a rank finishes, and by the
local launch for ranks that did not."""

from __future__ import annotations

import os

from runtime.train.shm import release_launch_buffers, release_shm_buffer


def test_release_shm_buffer_unlinks_only_this_ranks_segment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29611")
    monkeypatch.setenv("RANK", "1")
    prefix = f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_29611"
    mine, other_rank = tmp_path / f"{prefix}_1", tmp_path / f"{prefix}_0"
    other_run = tmp_path / f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_29612_1"
    for path in (mine, other_rank, other_run):
        path.write_bytes(b"x")
    assert release_shm_buffer(tmp_path) == mine
    assert not mine.exists() and other_rank.exists() and other_run.exists()
    assert release_shm_buffer(tmp_path) is None  # already gone (or never created: ranks on several hosts)


def test_the_launch_removes_the_buffers_its_ranks_left(tmp_path):
    prefix = f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1"
    left = [tmp_path / f"{prefix}_29700_0", tmp_path / f"{prefix}_29700_1"]
    other = tmp_path / f"{prefix}_29701_0"
    for path in (*left, other):
        path.write_bytes(b"x")
    assert release_launch_buffers(29700, 4, shm_dir=tmp_path) == left  # ranks 2 and 3 left none
    assert not any(p.exists() for p in left) and other.exists()
    assert release_launch_buffers(29700, 4, shm_dir=tmp_path) == []
