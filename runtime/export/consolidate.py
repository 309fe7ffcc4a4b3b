"""Turn a committed ZeRO checkpoint (any stage) into one fp32 state dict, saved as safetensors.

Trust order: the checkpoint's manifest must verify (`runtime.checkpoint.verify_checkpoint`: every
file present, sizes and sha256 match, nothing extra) before any pickle in it is opened; DeepSpeed's
consolidation (`get_fp32_state_dict_from_zero_checkpoint`) unpickles rank files with
`weights_only=False`, so it only ever sees files the training role committed.

- ZeRO 1-3 (`*_optim_states.pt` present): DeepSpeed's `zero_to_fp32` merges the fp32 master
  partitions of every rank (also correct for bf16 training, where module weights are bf16).
- ZeRO 0 (no optimizer shards): the module weights of `mp_rank_00_model_states.pt`, read with
  `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from runtime.checkpoint.local import CONFIG, MANIFEST, CheckpointError, find_latest_verified, verify_checkpoint
from runtime.export.config import ExportError, NoCheckpointError
from runtime.train.config import ConfigError, TrainConfig, config_digest
from runtime.train.families import Family, WeightsError, family_of
from runtime.train.loading import config_from_dict
from runtime.train.tabular import STATS_FILE, FeatureStats


@dataclass
class Consolidated:
    """A verified checkpoint's training config, its model family and its consolidated fp32 weights."""

    tag_dir: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    config: TrainConfig
    family: Family
    """The model family of `config` (`runtime.train.families`)."""
    state_dict: dict[str, torch.Tensor]
    model: nn.Module
    """The logits model holding these weights, in eval mode (built once, to check they fit)."""
    stats: FeatureStats | None = None
    """Feature statistics the model was trained with (`feature_stats.json`), None if unstandardised."""
    path: Path | None = None
    """The `<tag>.safetensors` written by `save_consolidated`, None until then."""

    @property
    def tag(self) -> str:
        return self.tag_dir.name

    def build_model(self) -> nn.Module:
        """A new logits model holding these weights, in eval mode (the family's `model_for_weights`)."""
        return _build_model(self.family, self.config, self.state_dict, self.tag_dir)


def _build_model(family: Family, config: TrainConfig, state: dict[str, torch.Tensor], tag_dir: Path) -> nn.Module:
    model = family.model_for_weights(config.model, state, tag_dir)
    model.load_state_dict(state, strict=True)
    return model.eval()


def resolve_checkpoint(checkpoints_dir: Path, tag: str | None) -> Path:
    """The tag directory to export: `tag` if given (it must verify), else the newest verified one.

    Raises:
        ExportError: no checkpoints directory, unknown tag, or nothing verifies (with the reasons).
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        raise NoCheckpointError(
            f"{checkpoints_dir}: no checkpoints directory; pass --run-dir of a trained run "
            "(python -m runtime train writes runs/<run>/checkpoints)"
        )
    if tag is None:
        try:
            return find_latest_verified(checkpoints_dir)
        except CheckpointError as e:
            raise NoCheckpointError(f"{e}; retrain, or pass --checkpoint with an intact tag") from None
    tag_dir = checkpoints_dir / tag
    if Path(tag).name != tag or not tag_dir.is_dir():
        found = sorted(p.name for p in checkpoints_dir.iterdir() if (p / MANIFEST).is_file())
        raise ExportError(
            f"--checkpoint {tag!r}: no such checkpoint in {checkpoints_dir}; "
            f"committed tags: {', '.join(found) or 'none'}"
        )
    return tag_dir


def _rebuild_config(tag_dir: Path, manifest: dict[str, Any]) -> TrainConfig:
    try:
        stored = json.loads((tag_dir / CONFIG).read_text())
        digest = config_digest(stored)
        if digest != manifest.get("config_digest"):
            raise ExportError(
                f"{tag_dir}/{CONFIG}: config digest {digest[:12]} does not match the manifest's "
                f"{str(manifest.get('config_digest'))[:12]}; the checkpoint is inconsistent, export another tag"
            )
        return config_from_dict(stored)  # fields added since the run get their defaults
    except FileNotFoundError:
        raise ExportError(f"{tag_dir}: no {CONFIG}; this checkpoint was not written by runtime.train") from None
    except (json.JSONDecodeError, ConfigError) as e:
        raise ExportError(f"{tag_dir}/{CONFIG}: cannot rebuild the training config ({e})") from None


def _zero_to_fp32(tag_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    chatter = io.StringIO()  # zero_to_fp32 prints progress; keep stdout for our own lines
    with contextlib.redirect_stdout(chatter):
        state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    return dict(state)


def _stage0_module(tag_dir: Path) -> dict[str, torch.Tensor]:
    path = tag_dir / "mp_rank_00_model_states.pt"
    if not path.is_file():
        raise ExportError(f"{tag_dir}: neither ZeRO optimizer shards nor {path.name}; not a DeepSpeed checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get("module"), dict):
        raise ExportError(f"{path}: no `module` state dict inside; not a DeepSpeed model-states file")
    return dict(state["module"])


def consolidate(tag_dir: Path) -> Consolidated:
    """Verify `tag_dir`, rebuild its training config, and merge its weights to fp32.

    Raises:
        ExportError: the manifest does not verify, the config is missing or inconsistent, or the
            weights do not fit the config's model (names or shapes).
    """
    tag_dir = Path(tag_dir)
    try:
        manifest = verify_checkpoint(tag_dir)
    except CheckpointError as e:
        raise NoCheckpointError(f"checkpoint does not verify: {e}; export another tag (--checkpoint)") from None
    manifest_bytes = (tag_dir / MANIFEST).read_bytes()
    if json.loads(manifest_bytes) != manifest:
        raise ExportError(f"{tag_dir}/{MANIFEST} changed while it was being verified; retry")
    config = _rebuild_config(tag_dir, manifest)
    has_shards = any(tag_dir.glob("*_optim_states.pt"))
    raw = _zero_to_fp32(tag_dir) if has_shards else _stage0_module(tag_dir)
    state = {name: t.detach().to(torch.float32).contiguous().clone() for name, t in raw.items()}
    family = family_of(config)  # config_from_dict checked model.kind
    try:
        model = _build_model(family, config, state, tag_dir)
    except WeightsError as e:
        raise ExportError(f"{tag_dir}: {e}") from None
    except RuntimeError as e:
        raise ExportError(f"{tag_dir}: weights do not fit model {config.model} ({e})") from None
    stats_path = tag_dir / STATS_FILE  # covered by the verified manifest
    return Consolidated(
        tag_dir=tag_dir,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        config=config,
        family=family,
        state_dict=state,
        model=model,
        stats=FeatureStats.from_json(stats_path.read_bytes()) if stats_path.is_file() else None,
    )


def load(checkpoints_dir: Path, tag: str | None) -> Consolidated:
    """The verified, consolidated checkpoint `tag` (None: the newest that verifies) of a run.

    Raises:
        NoCheckpointError: nothing verifies; ExportError: an unknown tag or an inconsistent one.
    """
    return consolidate(resolve_checkpoint(checkpoints_dir, tag))


def save_consolidated(result: Consolidated, out_dir: Path) -> Path:
    """Write `<out_dir>/<tag>.safetensors` atomically (temp file + os.replace); return its path.

    The safetensors metadata records the tag, the checkpoint manifest's sha256, the config digest
    and the training config JSON, so the file stands on its own.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.tag}.safetensors"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    metadata = {
        "format": "stratus-consolidated/1",
        "tag": result.tag,
        "checkpoint_manifest_sha256": result.manifest_sha256,
        "config_digest": result.config.digest(),
        "train_config": json.dumps(result.config.to_dict(), sort_keys=True),
    }
    try:
        save_file(result.state_dict, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_consolidated(path: Path) -> dict[str, torch.Tensor]:
    """Read weights written by `save_consolidated` (safetensors: no pickle involved)."""
    return load_file(str(path))
