"""Text data for language models: files or `s3://`, byte tokens, packed fixed-length sequences.

Sources (`data.source`, model.kind=gpt):
- `builtin:python-stdlib`: the `.py` files of the running Python's standard library (the
  directory `sysconfig.get_paths()["stdlib"]`, without `site-packages`), found at run time, so
  the corpus needs no download; it differs a little between Python versions.
- a directory (every regular file under it, recursively, in sorted path order; each must be
  UTF-8), a `.txt` file (one document), or a `.jsonl` file (one JSON object per line, its
  `data.text_field` string is a document);
- `s3://bucket/prefix/` (every object under the prefix, sorted by key) or `s3://bucket/key.jsonl`
  / `.txt`, read with boto3's standard environment.

At most `data.max_bytes` bytes are read (whole documents, in order). Documents are shuffled with
`seed` and joined with the end-of-text token; the last `val_fraction` of the tokens is the
validation split (so validation text is text the model never trained on). Each split is cut into
windows of `seq_len + 1` tokens (inputs and next-token targets), no padding. Windows are the
samples of `runtime.train.data.Dataset`, so sharding is the same as for rows: each rank takes its
contiguous slice of every global batch.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runtime.common.s3 import parse_s3_uri
from runtime.common.tokens import EOT
from runtime.train.config import BUILTIN_TEXT_SOURCE, DataConfig
from runtime.train.data import DataError, Dataset


def stdlib_files() -> list[Path]:
    """The standard library's `.py` sources of the running Python, sorted (no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)


def _jsonl_docs(text: str, name: str, field: str) -> Iterator[str]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}: line {line_no} is not JSON ({e.msg}); write one JSON object per line") from None
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise DataError(
                f"{name}: line {line_no} has no string field {field!r}; set data.text_field to the key holding the text"
            )
        yield value


def _docs_of(name: str, raw: bytes, field: str) -> Iterator[str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{name}: not UTF-8 text; convert it or remove it from the source") from None
    if name.lower().endswith(".jsonl"):
        yield from _jsonl_docs(text, name, field)
    else:
        yield text


def _local_items(source: str) -> Iterator[tuple[str, Path]]:
    if source == BUILTIN_TEXT_SOURCE:
        yield from ((str(p), p) for p in stdlib_files())
        return
    path = Path(source)
    if path.is_dir():
        yield from ((str(p), p) for p in sorted(path.rglob("*")) if p.is_file())
    elif path.is_file():
        yield str(path), path
    else:
        raise DataError(f"{source}: no such file or directory; set data.source to a text directory, .txt or .jsonl")


def _s3_items(source: str) -> Iterator[tuple[str, bytes]]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        bucket, key = parse_s3_uri(source)
        s3 = boto3.client("s3")
        if key and not key.endswith("/"):
            keys = [key]
        else:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            keys = sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))
        for k in keys:
            yield f"s3://{bucket}/{k}", s3.get_object(Bucket=bucket, Key=k)["Body"].read()
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None
    except (ClientError, BotoCoreError) as e:
        raise DataError(f"{source}: cannot read ({e}); check the bucket, prefix and credentials") from None


def read_documents(cfg: DataConfig) -> list[str]:
    """The documents of `cfg.source`, at most `cfg.max_bytes` bytes of them (whole documents).

    Raises:
        DataError: missing source, non-UTF-8 file, bad JSONL line, S3 error, or no text at all.
    """
    if cfg.source.startswith("s3://"):
        items = _s3_items(cfg.source)
    else:
        items = ((name, path.read_bytes()) for name, path in _local_items(cfg.source))
    docs: list[str] = []
    total = 0
    for name, raw in items:
        for doc in _docs_of(name, raw, cfg.text_field):
            if cfg.max_bytes and total + len(doc) > cfg.max_bytes and docs:
                return docs
            docs.append(doc)
            total += len(doc)
    if not any(docs):
        raise DataError(f"{cfg.source}: no text found; point data.source at UTF-8 text files or a .jsonl")
    return docs


def pack(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows [n, seq_len + 1] of a token stream (the tail that does not fill one is dropped)."""
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        return np.zeros((0, seq_len + 1), dtype=np.int64)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return tokens[idx].astype(np.int64)


def load_text_dataset(cfg: DataConfig, seq_len: int, seed: int) -> Dataset:
    """Packed train and validation windows of the corpus (see the module docstring).

    Raises:
        DataError: bad source, or too little text for one training and one validation window.
    """
    docs = read_documents(cfg)
    order = np.random.default_rng(seed + 1).permutation(len(docs))
    parts = []
    for i in order:
        parts.append(np.frombuffer(docs[i].encode("utf-8"), dtype=np.uint8).astype(np.int16))
        parts.append(np.array([EOT], dtype=np.int16))
    stream = np.concatenate(parts)
    cut = len(stream) - int(len(stream) * cfg.val_fraction)
    train, val = pack(stream[:cut], seq_len), pack(stream[cut:], seq_len)
    if len(train) < 1 or len(val) < 1:
        raise DataError(
            f"{cfg.source}: {len(stream)} tokens give {len(train)} training and {len(val)} validation "
            f"sequences of {seq_len + 1} tokens; add text, raise data.max_bytes, or lower model.seq_len"
        )
    x = np.concatenate([train, val])
    return Dataset(
        x=x,
        y=np.zeros(len(x), dtype=np.float32),
        train_idx=np.arange(len(train)),
        val_idx=np.arange(len(train), len(x)),
        source=cfg.source,
    )
