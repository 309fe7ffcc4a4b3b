"""The served form of an `hf-causal-lm` model: onnxruntime-genai's model builder, run quietly.

    built = build_genai(hf_dir, work / "int4", precision="int4", device="cpu")

The builder reads a Hugging Face directory (offline: a local path is never looked up on the hub)
and writes `model.onnx` (GroupQueryAttention with a key/value cache; int4/int8 weights as
block-wise `MatMulNBits`), its weights in `model.onnx.data`, `genai_config.json` (the runtime's
settings: context length, end-of-sequence ids, search defaults) and the tokenizer files; that
directory is the artifact. The builder prints a great deal (progress bars, every option); its
output is captured and shown only when it fails.

Precisions: `int4` and `int8` quantize the MatMul weights, LM head included (block size 32,
symmetric; on CPU the activations are quantized to int8 inside MatMulNBits, accuracy level 4);
int4 also quantizes the token embedding (`BUILD_OPTIONS`); `fp32` keeps every weight.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.export.config import ExportError

PRECISIONS = ("int4", "int8", "fp32")
PROVIDERS = {"cpu": "cpu", "cuda": "cuda"}
BUILD_OPTIONS: dict[str, list[str]] = {"int4": ["op_types_to_quantize=MatMul/Gather"], "int8": [], "fp32": []}
"""Extra builder options (`KEY=VALUE`) per precision, beside the builder's defaults (block 32,
symmetric, accuracy level 4 on CPU). int4 also quantizes the token embedding (`Gather`, as
GatherBlockQuantized): on a small model the embedding is a third of the weights, and its int4 form
costs well under 1% perplexity; int8's builder keeps the embedding fp32 whatever is asked."""
LOG_TAIL = 4000


@dataclass
class GenaiBuild:
    """One model-builder run."""

    path: Path
    """The directory written (`model.onnx`, `model.onnx.data`, `genai_config.json`, tokenizer)."""
    precision: str
    seconds: float
    bytes: int
    """Bytes of every file in `path` (the artifact's size)."""


@contextlib.contextmanager
def _captured():
    """Send Python's and the C libraries' stdout/stderr to a temp file; yield a reader of it."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        text = io.StringIO()
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield lambda: text.getvalue() + (sink.seek(0) or sink.read()).decode(errors="replace")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def dir_bytes(path: Path) -> int:
    """Bytes of every regular file under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def build_genai(hf_dir: Path, out_dir: Path, *, precision: str, device: str = "cpu") -> GenaiBuild:
    """Build the served model of the Hugging Face directory `hf_dir` into `out_dir` (new or empty).

    Raises:
        ExportError: an unknown precision or device, or the builder failed (the message carries
            the end of its output, e.g. an architecture it does not support).
    """
    from onnxruntime_genai.models import builder

    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if device not in PROVIDERS:
        raise ExportError(f"--device {device!r}: use one of {', '.join(PROVIDERS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stratus-genai-cache-") as cache, _captured() as output:
        args = (None, str(hf_dir), str(out_dir), precision, PROVIDERS[device], cache)
        try:
            options = builder.parse_extra_options(*args, list(BUILD_OPTIONS[precision]))
            builder.create_model(*args, **options)
        except Exception as e:  # the builder raises bare Exception/ValueError/NotImplementedError
            failure = f"{type(e).__name__}: {e}"
        else:
            failure = None
        log = output()
    if failure or not (out_dir / "model.onnx").is_file() or not (out_dir / "genai_config.json").is_file():
        raise ExportError(
            f"onnxruntime-genai's model builder could not build {hf_dir} at {precision} for {device}: "
            f"{failure or 'no model.onnx / genai_config.json written'}\n{log[-LOG_TAIL:]}"
        )
    return GenaiBuild(path=out_dir, precision=precision, seconds=time.monotonic() - started, bytes=dir_bytes(out_dir))
