"""Typed settings of `python -m runtime export`: what to compress, how to quantize, the gate.

Kept apart from `runtime.train.config.TrainConfig` on purpose: a checkpoint's training config is frozen
in its manifest (and its digest is provenance), while export settings change per export. Each field
is one flag of `stratus export` (`structured_fraction` <-> `--structured-fraction`; `out_dir` is
`--out`), derived by `runtime.common.options` with the field's docstring as its help, and
validation messages name that flag. `check_out_dir` validates what `--out` points at (run at the
start of an export and again when staging).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.common.options import option
from runtime.repository.artifact import FORMAT as ARTIFACT_FORMAT
from runtime.repository.artifact import MANIFEST

QUANTIZATION_CHOICES = ("dynamic", "static")
PRECISION_CHOICES = ("int4", "int8", "fp32")
DEVICE_CHOICES = ("cpu", "cuda")


class ExportError(ValueError):
    """A user-fixable export problem (bad setting, no usable checkpoint, data mismatch, output
    directory in the way); the message names the value and what to change."""


class NoCheckpointError(ExportError):
    """No checkpoint of the run verifies (or the one asked for does not); nothing was exported."""


class GateError(ExportError):
    """The exported model lost more accuracy than `--tolerance` allows; nothing was written."""


def _fail(flag: str, value: Any, fix: str) -> None:
    raise ExportError(f"--{flag.replace('_', '-')} {value!r} is invalid: {fix}")


@dataclass(kw_only=True)
class ExportConfig:
    run_dir: Path = option(metavar="DIR")
    """Run directory of a training run (`runs/<run>`), holding `checkpoints/<tag>/`."""

    checkpoint: str | None = option(None, metavar="TAG")
    """Checkpoint tag to export (`global_step<N>`); None: the newest one whose manifest verifies."""

    out_dir: Path | None = option(None, flag="--out", metavar="DIR")
    """Staged version directory to write (`model.onnx` + `manifest.json`); None: `<run_dir>/export`.
    An existing previous export there is replaced only after the new one passed the gate."""

    consolidated_dir: Path | None = option(None, metavar="DIR")
    """Where the consolidated fp32 weights go as `<tag>.safetensors`; None: `<run_dir>/consolidated`."""

    model_name: str | None = option(None, metavar="NAME")
    """Model name recorded in the manifest and used by `--publish`; None: the training preset's name."""

    structured_fraction: float = option(0.5, metavar="F")
    """Fraction of hidden units removed from every hidden layer (lowest in*out weight norm first):
    the rows of layer i and the matching columns of layer i+1 are cut, so the dense layers shrink.
    0 disables structured pruning."""

    sparsity: float = option(0.5, metavar="F")
    """Unstructured magnitude pruning, after structured pruning: the fraction of each Linear
    layer's weights set to zero (smallest |w| first). 0 disables it. Zeros do not shrink a dense
    int8 file; they are reported, and they compress when the artifact is zipped."""

    finetune_steps: int = option(200, metavar="N")
    """Adam steps on the training split after pruning, with the pruning masks held fixed, to
    recover accuracy (0: no fine-tune)."""

    finetune_lr: float | None = option(None, metavar="LR")
    """Fine-tune learning rate; None: the checkpoint's `optim.lr`."""

    finetune_batch_size: int | None = option(None, metavar="N")
    """Fine-tune batch size; None: the checkpoint's `global_batch_size`."""

    quantization: str = option("dynamic", choices=QUANTIZATION_CHOICES)
    """int8 quantization with ONNX Runtime: `dynamic` (weights int8, activation scales computed per
    batch at run time; no data needed) or `static` (QDQ, activation scales calibrated on
    `calibration_rows` training rows)."""

    per_channel: bool = False
    """One weight scale per output unit instead of one per tensor (slightly more accurate, larger)."""

    calibration_rows: int = option(512, metavar="N")
    """Training rows fed to the static-quantization calibrator (only with `quantization=static`)."""

    tolerance: float = option(1.0, metavar="POINTS")
    """Gate: the largest allowed validation-accuracy drop, in percentage points, from the fp32
    checkpoint model (PyTorch) to the exported int8 model (ONNX Runtime). A negative value demands
    an improvement (use it to test the gate)."""

    ffn_prune_fraction: float = option(0.0, metavar="F")
    """Language models (gpt): fraction of feed-forward hidden units removed from every block
    (lowest |fc row| x |proj column| first), so both FFN matrices shrink. 0 disables it. The MLP
    pruning flags above (`--structured-fraction`, `--sparsity`, fine-tune) apply to mlp models only."""

    perplexity_tolerance: float = option(5.0, metavar="PERCENT")
    """Language models (gpt, hf-causal-lm): the gate allows the served model's validation
    perplexity (gpt: int8; hf-causal-lm: `--precision`) to exceed the fp32 checkpoint model's by at
    most this many percent."""

    prune_layers: int = option(0, metavar="N")
    """hf-causal-lm: whole decoder layers removed, those whose output is most similar to their
    input (mean cosine similarity of the hidden states on validation text) first. 0 disables it;
    it must leave at least one layer."""

    heal_steps: int = option(0, metavar="N")
    """hf-causal-lm: AdamW steps on the training text after `--prune-layers` to recover
    perplexity (0: no heal); the learning rate is `--finetune-lr` or the checkpoint's `optim.lr`."""

    precision: str = option("int4", choices=PRECISION_CHOICES)
    """hf-causal-lm: weight precision of the served model built by onnxruntime-genai's model
    builder (with a key/value cache): `int4` or `int8` (block-wise weight-only MatMulNBits, block
    32, activations fp32) or `fp32`."""

    device: str = option("cpu", choices=DEVICE_CHOICES)
    """hf-causal-lm: the execution provider the served model is built for: `cpu`, or `cuda` for
    GPU serving hosts (the CUDA build of onnxruntime-genai). The gate and latency run the built
    model here, so `cuda` needs a GPU on the exporting machine."""

    compare: bool = False
    """hf-causal-lm: also build the other precisions and record their sizes and perplexities in the
    manifest (`metrics.compare`) for benchmarks; each build costs about as long as the first."""

    latency_threads: int = option(1, metavar="N")
    """CPU threads for the latency measurement (PyTorch and ONNX Runtime alike)."""

    latency_iters: int = option(200, metavar="N")
    """Timed calls per latency measurement (the median is reported, after 20 warm-up calls)."""

    publish: str | None = option(None, metavar="REPO")
    """After a passing export, publish the staged directory into this model repository (a local
    directory or `s3://bucket/prefix`) with `runtime.repository.publish.publish`."""

    kms_key_id: str | None = option(None, metavar="KEY")
    """KMS key for SSE-KMS uploads when publishing to `s3://` (the stack's `kms_key_arn`)."""

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        for name in ("out_dir", "consolidated_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        if not 0.0 <= self.structured_fraction < 1.0:
            _fail("structured_fraction", self.structured_fraction, "use a fraction in [0, 1), e.g. 0.5")
        if not 0.0 <= self.sparsity < 1.0:
            _fail("sparsity", self.sparsity, "use a fraction in [0, 1), e.g. 0.5 (0 disables)")
        if self.finetune_steps < 0:
            _fail("finetune_steps", self.finetune_steps, "use 0 (no fine-tune) or a positive count")
        if self.finetune_lr is not None and not 0.0 < self.finetune_lr < 1.0:
            _fail("finetune_lr", self.finetune_lr, "use a learning rate in (0, 1), e.g. 1e-4")
        if self.finetune_batch_size is not None and self.finetune_batch_size < 1:
            _fail("finetune_batch_size", self.finetune_batch_size, "use a positive batch size")
        if self.quantization not in QUANTIZATION_CHOICES:
            _fail("quantization", self.quantization, f"use one of {', '.join(QUANTIZATION_CHOICES)}")
        if self.calibration_rows < 1:
            _fail("calibration_rows", self.calibration_rows, "use a positive number of rows, e.g. 512")
        if not -100.0 <= self.tolerance <= 100.0:
            _fail("tolerance", self.tolerance, "give accuracy points in [-100, 100], e.g. 1.0")
        if not 0.0 <= self.ffn_prune_fraction < 1.0:
            _fail("ffn_prune_fraction", self.ffn_prune_fraction, "use a fraction in [0, 1), e.g. 0.25 (0 disables)")
        if not -100.0 <= self.perplexity_tolerance <= 1000.0:
            _fail("perplexity_tolerance", self.perplexity_tolerance, "give a percentage, e.g. 5")
        if self.prune_layers < 0:
            _fail("prune_layers", self.prune_layers, "use 0 (no pruning) or a positive number of layers")
        if self.heal_steps < 0:
            _fail("heal_steps", self.heal_steps, "use 0 (no heal) or a positive number of steps")
        if self.precision not in PRECISION_CHOICES:
            _fail("precision", self.precision, f"use one of {', '.join(PRECISION_CHOICES)}")
        if self.device not in DEVICE_CHOICES:
            _fail("device", self.device, f"use one of {', '.join(DEVICE_CHOICES)}")
        if self.latency_threads < 1:
            _fail("latency_threads", self.latency_threads, "use 1 or more threads")
        if self.latency_iters < 1:
            _fail("latency_iters", self.latency_iters, "use 1 or more timed calls, e.g. 200")
        if self.kms_key_id is not None and not (self.publish or "").startswith("s3://"):
            _fail("kms_key_id", self.kms_key_id, "it only applies with --publish s3://...; drop it")

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def resolved_out_dir(self) -> Path:
        return self.out_dir if self.out_dir is not None else self.run_dir / "export"

    @property
    def resolved_consolidated_dir(self) -> Path:
        return self.consolidated_dir if self.consolidated_dir is not None else self.run_dir / "consolidated"

    def hf_flags_set(self) -> list[str]:
        """The `hf-causal-lm`-only flags given a value other than their default (an exporter of
        another family refuses them)."""
        defaults = {"prune_layers": 0, "heal_steps": 0, "precision": "int4", "device": "cpu", "compare": False}
        return [f"--{name.replace('_', '-')}" for name, default in defaults.items() if getattr(self, name) != default]

    def compression_settings(self) -> dict[str, Any]:
        """The settings recorded under `compression` in the artifact manifest."""
        return {
            "structured_fraction": self.structured_fraction,
            "sparsity": self.sparsity,
            "sparsity_scope": "per-layer magnitude (L1), Linear weights only",
            "finetune_steps": self.finetune_steps,
            "quantization": {
                "mode": self.quantization,
                "weight_type": "int8",
                "per_channel": self.per_channel,
                "tool": "onnxruntime.quantization",
                **(
                    {"calibration_rows": self.calibration_rows, "format": "QDQ"}
                    if self.quantization == "static"
                    else {}
                ),
            },
        }


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but a previous export (or an empty directory).

    Raises:
        ExportError: `out_dir` is a file or symlink, or a directory holding something else.
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: exists and is not a directory; choose a new directory")
    entries = list(out_dir.iterdir())
    if not entries:
        return
    try:
        previous = json.loads((out_dir / MANIFEST).read_text())
        ours = isinstance(previous, dict) and previous.get("format") == ARTIFACT_FORMAT
    except (OSError, ValueError):
        ours = False
    if not ours:
        names = ", ".join(sorted(p.name for p in entries)[:5])
        raise ExportError(
            f"--out {out_dir}: holds files that are not a previous export ({names}); choose a new or empty directory"
        )
