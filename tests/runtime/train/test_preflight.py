"""The all-reduce bandwidth preflight on 2 gloo ranks (plain processes on 127.0.0.1, no DeepSpeed).

One pair of processes measures twice, with no floor and with a floor no link reaches, so torch is
imported once per rank for both tests (the log line of a real launch is checked in tests/sim).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

RANK = """
import json, sys
import torch.distributed as dist
from runtime.train import preflight
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
results = []
for floor in (0, 1e6):
    try:
        results.append({"gbps": preflight.check("cpu", floor)})
    except preflight.PreflightError as e:
        results.append({"error": str(e)})
open(f"{out}.{rank}", "w").write(json.dumps(results))
dist.destroy_process_group()
"""
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, list[dict]]:
    """{"no floor": [rank 0's result, rank 1's], "1e6 GB/s": [...]}"""
    port, out = free_port(), str(tmp_path_factory.mktemp("preflight") / "result")
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(r), str(port), out], cwd=ROOT) for r in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    per_rank = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    return {"no floor": [r[0] for r in per_rank], "1e6 GB/s": [r[1] for r in per_rank]}


def test_bus_bandwidth_is_measured_and_the_same_on_every_rank(two_ranks):
    results = two_ranks["no floor"]
    assert results[0]["gbps"] > 0 and results[0] == results[1]


def test_below_the_floor_every_rank_stops_with_the_figure_and_the_floor(two_ranks):
    for r in two_ranks["1e6 GB/s"]:
        assert (
            "below the floor of 1e+06 GB/s (STRATUS_MIN_BUS_GBPS)" in r["error"] and "nothing was trained" in r["error"]
        )
