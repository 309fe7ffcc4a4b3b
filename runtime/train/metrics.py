"""Training metrics: a CSV appended as training goes, a PNG plot and a JSON summary at the end."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

COLUMNS = [
    "step",
    "epoch",
    "loss",
    "val_loss",
    "val_accuracy",
    "val_perplexity",
    "samples_per_s",
    "tokens_per_s",
    "mfu",
    "elapsed_s",
]


class MetricsLog:
    """Append-only CSV of progress rows. On resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        rows = self.read(path) if resume_step and path.exists() else []
        rows = [r for r in rows if int(r["step"]) <= resume_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, **row: Any) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: row.get(k, "") for k in COLUMNS})

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], key: str, scale: float = 1.0) -> list[tuple[int, float]]:
    return [(int(r["step"]), scale * float(r[key])) for r in rows if r.get(key)]


def _line(ax, points: list[tuple[int, float]], *args, **kwargs) -> None:
    if points:
        ax.plot(*zip(*points, strict=True), *args, **kwargs)


def plot(csv_path: Path, png_path: Path, title: str) -> None:
    """Three panels: train/val loss; validation accuracy or perplexity; throughput and MFU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = MetricsLog.read(csv_path)
    lm = any(r.get("val_perplexity") or r.get("tokens_per_s") for r in rows)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    _line(ax1, _series(rows, "loss"), label="train loss")
    _line(ax1, _series(rows, "val_loss"), "o-", label="val loss")
    ax1.set_ylabel("cross-entropy (nats/token)" if lm else "binary cross-entropy")
    ax1.legend()
    if lm:
        _line(ax2, _series(rows, "val_perplexity"), "o-", color="tab:green")
        ax2.set_ylabel("validation perplexity")
    else:
        _line(ax2, _series(rows, "val_accuracy", 100.0), "o-", color="tab:green")
        ax2.set_ylabel("validation accuracy (%)")
    _line(ax3, _series(rows, "tokens_per_s" if lm else "samples_per_s"), color="tab:blue")
    ax3.set_ylabel("tokens/s" if lm else "samples/s", color="tab:blue")
    twin = ax3.twinx()
    _line(twin, _series(rows, "mfu", 100.0), "--", color="tab:red")
    twin.set_ylabel("MFU (% of measured matmul peak)", color="tab:red")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
