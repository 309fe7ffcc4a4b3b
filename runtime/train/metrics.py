"""Training metrics: a CSV appended as training goes, a PNG plot and a JSON summary at the end."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

COLUMNS = ["step", "epoch", "loss", "val_loss", "val_accuracy", "samples_per_s", "elapsed_s"]


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


def plot(csv_path: Path, png_path: Path, title: str) -> None:
    """Loss per step and validation accuracy per step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = MetricsLog.read(csv_path)
    loss = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    acc = [(int(r["step"]), 100 * float(r["val_accuracy"])) for r in rows if r["val_accuracy"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if loss:
        ax1.plot(*zip(*loss, strict=True), label="train loss")
    val_loss = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    if val_loss:
        ax1.plot(*zip(*val_loss, strict=True), "o-", label="val loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("binary cross-entropy")
    ax1.legend()
    ax1.grid(alpha=0.3)
    if acc:
        ax2.plot(*zip(*acc, strict=True), "o-", color="tab:green")
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation accuracy (%)")
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
