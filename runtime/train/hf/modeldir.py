"""A Hugging Face model directory: checked, verified against its hashes, fetched from `s3://`.

    path = resolve_model_dir("s3://bucket/models/llama/", cache_root=run_dir / "hf-model")

A usable directory holds `config.json`, at least one `*.safetensors` weight file (pickle `.bin`
weights are refused: unpickling runs code) and tokenizer files (`tokenizer.json`, or a
SentencePiece `tokenizer.model`, or `vocab.json` + `merges.txt`). Every safetensors header is
read before any weight is loaded, so a truncated or corrupted file is named here rather than
deep inside `from_pretrained`.

`stratus-model.json` (`MODEL_MANIFEST`, written by `stratus model push`) lists the sha256 and
size of every file of the directory. When a directory holds one, every file is verified against
it before loading, and a file it does not list is refused. An `s3://` directory must have one: its
listed files are downloaded into a per-run cache directory (a fresh temporary directory renamed
into place once verified, so ranks and the preflight sharing a node never see a partial copy).
Nothing is downloaded from a model hub, ever.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from runtime.common.fsutil import sha256_file
from runtime.common.s3 import parse_s3_uri
from runtime.train.data import DataError

MODEL_MANIFEST = "stratus-model.json"
MANIFEST_FORMAT = "stratus-model/1"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
"""Tokenizer files a Hugging Face directory may hold (any that exist travel with checkpoints)."""
TOKENIZER_CORE = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
"""Alternatives, one of which a directory must hold completely to have a tokenizer."""


class ModelDirError(DataError):
    """A model directory that cannot be loaded: the message names the file and what to do."""


def _files(root: Path) -> list[str]:
    """Relative paths of the directory's regular files, hidden ones and the manifest excluded."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts) and str(rel) != MODEL_MANIFEST:
            found.append(str(rel))
    return found


def model_manifest(root: Path) -> dict[str, Any]:
    """The `stratus-model.json` document of a local directory: sha256 and size of every file."""
    root = Path(root)
    files = {}
    for rel in _files(root):
        digest, size = sha256_file(root / rel)
        files[rel] = {"sha256": digest, "size": size}
    return {"format": MANIFEST_FORMAT, "files": files}


def _manifest_files(manifest: Any, where: str) -> dict[str, dict[str, Any]]:
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise ModelDirError(f"{where}: no `files` listed; write it again with `stratus model push`")
    for rel, entry in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not isinstance(entry, dict):
            raise ModelDirError(f"{where}: bad entry {rel!r}; write it again with `stratus model push`")
    return files


def verify_against_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Every file listed is present with its size and sha256, and no other file is there.

    Raises:
        ModelDirError: naming the first file that is missing, differs, or is not listed.
    """
    where = f"{root}/{MODEL_MANIFEST}"
    files = _manifest_files(manifest, where)
    for rel, entry in files.items():
        path = root / rel
        if not path.is_file():
            raise ModelDirError(f"{path}: listed in {MODEL_MANIFEST} but missing; copy the model directory again")
        if path.stat().st_size != entry.get("size") or sha256_file(path)[0] != entry.get("sha256"):
            raise ModelDirError(
                f"{path}: does not match its sha256/size in {MODEL_MANIFEST} (changed or corrupted); "
                "restore the file or push the directory again"
            )
    extra = sorted(set(_files(root)) - set(files))
    if extra:
        raise ModelDirError(
            f"{root}: {', '.join(extra)} not listed in {MODEL_MANIFEST}; remove them or push the directory again"
        )


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                f.get_slice(name).get_shape()
        with open(path, "rb") as raw:
            header_len = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(header_len))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelDirError(f"{path}: not a readable safetensors file ({e}); copy the weights again") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise ModelDirError(
            f"{path}: {size} bytes, but its header describes {8 + header_len + end} (truncated or padded); "
            "copy the weights again"
        )


def check_model_dir(root: Path, *, weights: bool = True) -> Path:
    """`root` if it is a loadable Hugging Face directory (see the module docstring); with
    `weights=False`, a copy of everything but the weights (config and tokenizer: enough to
    validate a launch and tokenize its data).

    Raises:
        ModelDirError: a missing file, pickle weights, a bad safetensors file, or a file that
            does not match `stratus-model.json`.
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelDirError(f"{root}: no such directory; set model.model_dir (--model-dir) to a Hugging Face model")
    if not (root / "config.json").is_file():
        raise ModelDirError(f"{root}/config.json: missing; a Hugging Face model directory needs its config.json")
    if (root / MODEL_MANIFEST).is_file():
        try:
            manifest = json.loads((root / MODEL_MANIFEST).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelDirError(f"{root}/{MODEL_MANIFEST}: not JSON ({e}); push the directory again") from None
        verify_against_manifest(root, manifest)
    found = sorted(root.glob("*.safetensors")) if weights else []
    if weights and not found:
        pickles = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt"))
        hint = f" ({', '.join(pickles)} are pickle files, which are not accepted: loading them runs code)"
        raise ModelDirError(
            f"{root}: no *.safetensors weights{hint if pickles else ''}; save the model with "
            "`model.save_pretrained(dir, safe_serialization=True)`"
        )
    if not any(all((root / name).is_file() for name in group) for group in TOKENIZER_CORE):
        raise ModelDirError(
            f"{root}/tokenizer.json: missing (nor tokenizer.model, nor vocab.json + merges.txt); "
            "save the tokenizer into the directory with `tokenizer.save_pretrained(dir)`"
        )
    for path in found:
        _check_safetensors(path)
    return root


def _download(uri: str, dest: Path, weights: bool) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        bucket, prefix = parse_s3_uri(uri)
    except ValueError as e:
        raise ModelDirError(f"model.model_dir: {e}") from None
    prefix = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
    s3 = boto3.client("s3")
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}{MODEL_MANIFEST}")["Body"].read()
    except (ClientError, BotoCoreError) as e:
        raise ModelDirError(
            f"s3://{bucket}/{prefix}{MODEL_MANIFEST}: cannot read it ({e}); upload the directory with "
            "`stratus model push DIR`, which writes it"
        ) from None
    try:
        manifest = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"s3://{bucket}/{prefix}{MODEL_MANIFEST}: not JSON ({e}); push again") from None
    files = _manifest_files(manifest, f"s3://{bucket}/{prefix}{MODEL_MANIFEST}")
    if not any(rel.endswith(".safetensors") for rel in files):
        raise ModelDirError(
            f"{uri}: no *.safetensors weights listed in {MODEL_MANIFEST}; push a directory that has them"
        )
    if not weights:
        files = {rel: entry for rel, entry in files.items() if not rel.endswith(".safetensors")}
        body = json.dumps({**manifest, "files": files}).encode()
    try:
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, f"{prefix}{rel}", str(dest / rel))
    except (ClientError, BotoCoreError) as e:
        raise ModelDirError(f"{uri}: cannot download {rel} ({e}); check the prefix and credentials") from None
    (dest / MODEL_MANIFEST).write_bytes(body)


def resolve_model_dir(model_dir: str, cache_root: Path, *, weights: bool = True) -> Path:
    """The checked local directory of `model.model_dir`, downloading an `s3://` one first.

    Args:
        model_dir: a local path or `s3://bucket/prefix/`.
        cache_root: where `s3://` directories are downloaded (one subdirectory per URI).
        weights: False: an `s3://` directory without its weights (config and tokenizer files,
            for validating a launch without downloading the model to the launching machine).

    Raises:
        ModelDirError: see `check_model_dir`, or the download failed.
    """
    if not model_dir.startswith("s3://"):
        return check_model_dir(Path(model_dir))
    final = Path(cache_root) / (hashlib.sha256(model_dir.encode()).hexdigest()[:16] + ("" if weights else "-meta"))
    if final.is_dir():
        return check_model_dir(final, weights=weights)  # an earlier process's copy: verified again
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=final.parent))
    try:
        _download(model_dir, partial, weights)
        check_model_dir(partial, weights=weights)
        try:
            os.rename(partial, final)
        except OSError:
            if not final.is_dir():  # another process sharing the cache renamed its copy first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def upload_model_dir(root: Path, bucket: str, prefix: str, kms_key_id: str | None) -> str:
    """Check `root`, upload every file under `s3://bucket/prefix/` with SSE-KMS, then its
    `stratus-model.json` (last: a reader that finds the manifest finds every file). Returns the URI.

    Raises:
        ModelDirError: `root` is not a loadable model directory; botocore errors on upload.
    """
    import boto3

    from runtime.common.s3 import sse_kms_args

    root = check_model_dir(Path(root))
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    manifest = model_manifest(root)
    s3 = boto3.client("s3")
    extra = sse_kms_args(kms_key_id)
    for rel in manifest["files"]:
        s3.upload_file(str(root / rel), bucket, f"{prefix}{rel}", ExtraArgs=extra)
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    s3.put_object(Bucket=bucket, Key=f"{prefix}{MODEL_MANIFEST}", Body=body, **extra)
    return f"s3://{bucket}/{prefix}"
