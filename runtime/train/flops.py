"""The machine's measured matmul peak, the reference for model FLOP utilisation (MFU).

MFU = achieved model FLOP/s (FLOPs per sample x samples/s, forward + backward, recomputation not
counted) / the matmul peak. The peak is not a datasheet number: every rank times square matmuls
of the training dtype at the same moment, as the ranks will then share the machine, and the
per-rank rates are summed. Printed once at start and recorded in `summary.json`.
"""

from __future__ import annotations

import time

import torch

PEAK_MATMUL_SIZE = 1024
PEAK_SECONDS = 0.5


def measure_matmul_peak(dtype: torch.dtype, device: str, seconds: float = PEAK_SECONDS) -> float:
    """FLOP/s of `size x size` matmuls in `dtype` on `device`, best of a few timed rounds."""
    n = PEAK_MATMUL_SIZE
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.mm(a, b)
    sync()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        sync()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best


def mfu(flops_per_sample: float, samples_per_s: float, peak_flops: float) -> float:
    """Model FLOP utilisation in [0, 1] (0 when the peak is unknown)."""
    return flops_per_sample * samples_per_s / peak_flops if peak_flops > 0 else 0.0
