"""A consolidated `hf-causal-lm` checkpoint as a Hugging Face directory, and its text windows.

    model = merged_model(ckpt.model)                       # LoRA adapters folded in, fp32, eval
    save_hf_dir(model, ckpt.tag_dir / "hf", run_dir / "hf-export" / ckpt.tag)

The directory is what any Hugging Face tool reads (`config.json`, `model.safetensors`,
`generation_config.json`, the tokenizer files and chat template the checkpoint committed under
`hf/`), and it is the input of onnxruntime-genai's model builder. It is written into a temp
sibling and swapped in, so a failed export never leaves half a directory.

`TextWindows` holds the checkpoint's training and validation windows as the training half's
loader (`runtime.train.hf.data.load_jsonl_dataset`) packs and splits them: the gate measures
text the model never trained on.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from runtime.common.fsutil import replaced_dir
from runtime.export.config import ExportError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WRITTEN_BY_SAVE = ("config.json",)
"""Files `save_pretrained` writes from the model itself (never copied from the checkpoint)."""


def merged_model(module: nn.Module) -> nn.Module:
    """A copy of `module` as a plain `transformers` model in fp32 eval mode: a peft-wrapped model
    has its LoRA adapters merged into the base weights (`merge_and_unload`)."""
    model = copy.deepcopy(module)
    try:
        from peft import PeftModel
    except ImportError:  # peft is only needed when the checkpoint was trained with LoRA
        PeftModel = ()  # noqa: N806
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    return model.float().eval()


def _is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name in WEIGHT_INDEXES or name in WRITTEN_BY_SAVE


def save_hf_dir(model: nn.Module, source_dir: Path, out_dir: Path) -> Path:
    """Write `model` as a Hugging Face directory at `out_dir` (replaced atomically); return it.

    Args:
        model: a `transformers` causal LM (`save_pretrained`), e.g. from `merged_model`.
        source_dir: the checkpoint's `hf/` directory: every file but its weights and `config.json`
            (tokenizer files, chat template, `generation_config.json`) is copied beside the weights.
        out_dir: the directory to write; an existing one is replaced only once the new one is complete.

    Raises:
        ExportError: `source_dir` has no tokenizer (`tokenizer_config.json`) to copy.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not (source_dir / "tokenizer_config.json").is_file():
        raise ExportError(
            f"{source_dir}: no tokenizer_config.json; the checkpoint must hold the model's tokenizer files"
        )
    with replaced_dir(out_dir) as staging:
        model.config.use_cache = True  # the served model generates with a key/value cache
        model.save_pretrained(staging, safe_serialization=True)
        for path in sorted(source_dir.iterdir()):
            if path.is_file() and not _is_weight_file(path.name):
                shutil.copyfile(path, staging / path.name)
    return out_dir


def weights_bytes(hf_dir: Path) -> int:
    """Bytes of the safetensors weight files of a Hugging Face directory."""
    return sum(p.stat().st_size for p in Path(hf_dir).glob("*.safetensors"))


@dataclass
class TextWindows:
    """Packed token windows `[n, seq_len + 1]` of the checkpoint's data, split by seed."""

    train: np.ndarray
    val: np.ndarray
