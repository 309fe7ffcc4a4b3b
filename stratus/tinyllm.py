"""`stratus model tiny DIR`: a small Llama-architecture Hugging Face model made here, offline.

A user's own model is a Hugging Face directory (`config.json`, `*.safetensors`, tokenizer files);
this command writes one without downloading anything, so the bring-your-own-model path
(`stratus train --preset hf-tiny --model-dir DIR`, export to int4, the OpenAI-compatible server)
can be tried, tested and benchmarked on any machine:

1. a byte-level BPE tokenizer (`tokenizers`) trained on the running Python's standard library
   sources, with `<s>`, `</s>`, `<pad>` and a chat template (`<|role|>` lines, `</s>` after each turn);
2. `LlamaForCausalLM` from a `LlamaConfig` (random init, seeded), pre-trained for `steps` steps of
   next-token prediction on the same text with AdamW, so its perplexity means something;
3. `save_pretrained` of both (safetensors).

    python -m stratus model tiny /tmp/tiny-llama --steps 300
    python -m stratus model tiny /tmp/llama-110m --hidden 768 --layers 12 --heads 12 --steps 0

The tests and `bench/llm_serve.py` make their models with `make_tiny_llama`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""Each turn is `<|role|>` + newline + content + `</s>` + newline; a generation prompt opens the
assistant's turn. The assistant's answer therefore ends with the end-of-sequence token."""

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")


@dataclass(frozen=True)
class TinyLlama:
    """The shape of the model `make_tiny_llama` writes (defaults: ~1.3M parameters)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 344
    vocab: int = 2048
    context: int = 512
    """max_position_embeddings: the longest sequence the model (and its served form) takes."""


def _corpus(max_files: int) -> list[str]:
    from runtime.train.text import stdlib_files

    texts = []
    for path in stdlib_files()[:max_files]:
        try:
            texts.append(path.read_text("utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def _tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos, eos, pad = SPECIAL_TOKENS
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_llama(
    out_dir: Path | str,
    shape: TinyLlama = TinyLlama(),
    *,
    steps: int = 200,
    seq_len: int = 64,
    batch: int = 16,
    seed: int = 0,
    max_files: int = 150,
    log=print,
) -> Path:
    """Write a Llama-architecture model and its tokenizer to `out_dir`; returns `out_dir`.

    `steps` of pre-training (AdamW, lr 3e-3 with cosine decay, `batch` x `seq_len` tokens per
    step) on the standard library's sources; 0 leaves the random init."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    started = time.monotonic()
    texts = _corpus(max_files)
    tokenizer = _tokenizer(texts, shape.vocab)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    log(f"tiny llama: {params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, context {shape.context}")
    if steps:
        ids = torch.tensor(
            [t for text in texts for t in (*tokenizer(text)["input_ids"], tokenizer.eos_token_id)], dtype=torch.long
        )
        windows = ids[: len(ids) // (seq_len + 1) * (seq_len + 1)].view(-1, seq_len + 1)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        model.train()
        for step in range(1, steps + 1):
            batch_ids = windows[torch.randint(len(windows), (batch,), generator=gen)]
            loss = model(input_ids=batch_ids, labels=batch_ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step % 50 == 0 or step == steps:
                log(f"  pre-train step {step}/{steps}: loss {loss.item():.3f}")
        model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log(f"wrote {out_dir} in {time.monotonic() - started:.1f}s")
    return out_dir
