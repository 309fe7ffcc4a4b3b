"""DeepSpeed's CPU shared-memory all-reduce buffers are removed when a rank finishes."""

from __future__ import annotations

import os

from runtime.train.collectives import release_shm_buffer


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
