"""What every language-model family's task does the same way: validation and its report.

`PerplexityReport` is a base of the `gpt` and `hf-causal-lm` tasks (`runtime.train.families.spec.Task`):
the validation windows and batch, the metric (`val_perplexity`, from the mean token loss), its
text in progress lines and metrics.csv, throughput in tokens, the summary keys and the closing
line. A task sets `cfg` and `tokens_per_sample` (its `seq_len`), and may add summary keys with
`extra_summary`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from runtime.train.config import TrainConfig
from runtime.train.data import Dataset


class PerplexityReport:
    """The validation and reporting half of a next-token-prediction task."""

    metric_name = "val_perplexity"
    cfg: TrainConfig
    tokens_per_sample: int

    def eval_batch_size(self, micro_batch: int) -> int:
        return max(1, micro_batch)

    def val_indices(self, data: Dataset) -> np.ndarray:
        """The validation windows, the first `data.val_max_sequences` of them when it is set."""
        cap = self.cfg.data.val_max_sequences
        return data.val_idx[:cap] if cap else data.val_idx

    def finish_eval(self, loss_sum: float, metric_sum: float, count: float) -> tuple[float, float]:
        loss = loss_sum / max(count, 1.0)
        return loss, math.exp(min(loss, 50.0))

    def metric_text(self, value: float) -> str:
        return f"val_ppl {value:.3f}"

    def metric_csv(self, value: float) -> str:
        return f"{value:.4f}"

    def speed_text(self, samples_per_s: float) -> str:
        return f"{samples_per_s * self.tokens_per_sample:.0f} tokens/s"

    def extra_summary(self) -> dict[str, Any]:
        """The family's own summary.json keys (none by default)."""
        return {}

    def summary_facts(self, metric: float, samples_per_s: float) -> dict[str, Any]:
        return {
            "val_accuracy": float("nan"),  # the key every summary.json has had
            "val_perplexity": metric,
            "seq_len": self.cfg.model.seq_len,
            "tokens_per_s": samples_per_s * self.cfg.model.seq_len,
            **self.extra_summary(),
        }

    def done_line(self, steps: int, summary: dict[str, Any], run_dir: Path) -> str:
        return (
            f"done: {steps} steps, val perplexity {summary['val_perplexity']:.3f}, "
            f"{summary['tokens_per_s']:.0f} tokens/s, MFU {100 * summary['mfu']:.2f}%, {run_dir}"
        )
