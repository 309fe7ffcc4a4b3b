"""The all-reduce bandwidth preflight on 2 gloo ranks (plain processes on 127.0.0.1, no DeepSpeed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

RANK = """
import json, sys
import torch.distributed as dist
from runtime.train import preflight
rank, port, floor, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
try:
    result = {"gbps": preflight.check("cpu", floor)}
except preflight.PreflightError as e:
    result = {"error": str(e)}
open(f"{out}.{rank}", "w").write(json.dumps(result))
dist.destroy_process_group()
"""
ROOT = Path(__file__).resolve().parents[3]


def _two_ranks(tmp_path, floor: float) -> list[dict]:
    port, out = free_port(), str(tmp_path / "result")
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(r), str(port), str(floor), out], cwd=ROOT)
             for r in (0, 1)]  # fmt: skip
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]


def test_bus_bandwidth_is_measured_and_the_same_on_every_rank(tmp_path):
    results = _two_ranks(tmp_path, 0)
    assert results[0]["gbps"] > 0 and results[0] == results[1]


def test_below_the_floor_every_rank_stops_with_the_figure_and_the_floor(tmp_path):
    results = _two_ranks(tmp_path, 1e6)
    for r in results:
        assert (
            "below the floor of 1e+06 GB/s (STRATUS_MIN_BUS_GBPS)" in r["error"] and "nothing was trained" in r["error"]
        )
