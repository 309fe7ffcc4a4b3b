"""JSONL fine-tuning data for Hugging Face causal LMs: plain text or chat, packed with loss masks.

Each line of `data.source` (a local `.jsonl` or `s3://bucket/key.jsonl`) is one document:

    {"text": "..."}                                            every token is a target
    {"messages": [{"role": "user", "content": "..."},           rendered with the tokenizer's
                  {"role": "assistant", "content": "..."}]}     chat template; only the assistant
                                                                turns are targets

Assistant tokens are found by rendering prefixes: for the i-th assistant message, the conversation
up to it with the generation prompt, and the conversation including it; the characters between
the two renderings are the answer (with whatever the template closes a turn with, e.g. `</s>`),
and the tokens whose characters start there are targets. This works for any template that renders
a conversation's prefixes as prefixes of its rendering (every common one does; one that does not
is refused with the line named).

Documents are shuffled with `seed`; the last `data.val_fraction` of them (at least one) are the
validation split, before packing, so validation text is never trained on. Each split's documents
are joined (each ends with the end-of-sequence token) and cut into windows of `seq_len + 1` tokens. Dataset
`x` holds the token windows, `y` the per-token target masks (1.0 where the token is predicted);
a window without any target is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from runtime.common.s3 import download_to_temp
from runtime.train.config import DataConfig
from runtime.train.data import DataError, Dataset
from runtime.train.text import pack

MAKE_JSONL = (
    'write one JSON object per line: {"text": "..."} or '
    '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
)


def read_jsonl(source: str) -> list[str]:
    """The lines of a local or `s3://` `.jsonl` file (DataError naming the source otherwise)."""
    if not source.lower().endswith(".jsonl"):
        raise DataError(f"{source}: model.kind=hf-causal-lm reads a .jsonl file; {MAKE_JSONL}")
    if source.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            path = download_to_temp(source)
        except (ValueError, ClientError, BotoCoreError) as e:
            raise DataError(f"{source}: cannot download ({e}); check the bucket, key and credentials") from None
        try:
            return path.read_text("utf-8").splitlines()
        finally:
            path.unlink(missing_ok=True)
    try:
        return Path(source).read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{source}: no such file; set data.source (--data) to a .jsonl file") from None
    except UnicodeDecodeError:
        raise DataError(f"{source}: not UTF-8 text; save the .jsonl as UTF-8") from None


def parse_record(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as `{"text": str}` or `{"messages": [...]}`, checked field by field."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not JSON ({e.msg}); {MAKE_JSONL}") from None
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return {"text": record["text"]}
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where} has neither a string `text` nor a non-empty `messages` list; {MAKE_JSONL}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"{where}: messages[{i}] is not an object; give {{'role': ..., 'content': ...}}")
        for field in ("role", "content"):
            if not isinstance(message.get(field), str):
                raise DataError(f"{where}: messages[{i}].{field} is missing or not a string; give it as text")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no message with role `assistant`; a chat line trains on the assistant's turns")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


def _render(tokenizer: Any, messages: list[dict[str, str]], prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def chat_tokens(tokenizer: Any, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[float]]:
    """Token ids of a rendered conversation and its mask: 1.0 on the assistant's tokens only."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{where}: the model's tokenizer has no chat template; add one to tokenizer_config.json "
            "(or chat_template.jinja), or write the data as {'text': ...} lines"
        )
    full = _render(tokenizer, messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = _render(tokenizer, messages[:i], True), _render(tokenizer, messages[: i + 1], False)
        if not (full.startswith(through) and through.startswith(before)):
            raise DataError(
                f"{where}: the chat template does not render the conversation's prefixes as prefixes of it, "
                "so the assistant's tokens cannot be found; use a template that appends turn by turn"
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [1.0 if any(lo <= start < hi for lo, hi in spans) else 0.0 for start, _ in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), mask


def document_tokens(tokenizer: Any, record: dict[str, Any], where: str) -> tuple[list[int], list[float]]:
    """(ids, target mask) of one parsed record, followed by the end-of-sequence separator (a
    target after text, where it teaches the model to stop; not after a chat, whose template
    already closes each turn)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"{where}: the tokenizer has no eos_token; set one in tokenizer_config.json")
    if "text" in record:
        ids = list(tokenizer(record["text"], add_special_tokens=True)["input_ids"])
        return [*ids, eos], [1.0] * (len(ids) + 1)
    ids, mask = chat_tokens(tokenizer, record["messages"], where)
    return [*ids, eos], [*mask, 0.0]


def _packed(docs: list[tuple[list[int], list[float]]], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    ids = [t for doc_ids, _ in docs for t in doc_ids]
    mask = [m for _, doc_mask in docs for m in doc_mask]
    x = pack(np.asarray(ids, dtype=np.int64), seq_len)
    y = pack(np.asarray(mask, dtype=np.float32), seq_len).astype(np.float32)
    keep = y[:, 1:].sum(axis=1) > 0
    return x[keep], y[keep]


def load_jsonl_dataset(cfg: DataConfig, tokenizer: Any, seq_len: int, seed: int) -> Dataset:
    """Packed train and validation windows with target masks (see the module docstring).

    Raises:
        DataError: a bad line (named with its number and field), or too little data.
    """
    docs = []
    for line_no, line in enumerate(read_jsonl(cfg.source), start=1):
        if line.strip():
            where = f"{cfg.source}: line {line_no}"
            docs.append(document_tokens(tokenizer, parse_record(line, where), where))
    if len(docs) < 2:
        raise DataError(f"{cfg.source}: {len(docs)} document(s); give at least 2 (training and validation)")
    order = np.random.default_rng(seed + 1).permutation(len(docs))
    num_val = max(1, round(len(docs) * cfg.val_fraction))
    train_docs = [docs[i] for i in order[:-num_val]]
    val_docs = [docs[i] for i in order[-num_val:]]
    (tx, ty), (vx, vy) = _packed(train_docs, seq_len), _packed(val_docs, seq_len)
    if len(tx) < 1 or len(vx) < 1:
        raise DataError(
            f"{cfg.source}: {len(tx)} training and {len(vx)} validation windows of {seq_len + 1} tokens with "
            "targets; add lines, lower model.seq_len, or change data.val_fraction"
        )
    return Dataset(
        x=np.concatenate([tx, vx]),
        y=np.concatenate([ty, vy]),
        train_idx=np.arange(len(tx)),
        val_idx=np.arange(len(tx), len(tx) + len(vx)),
        source=cfg.source,
    )
