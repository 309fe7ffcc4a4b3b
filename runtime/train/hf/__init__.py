"""The `hf-causal-lm` family's heavier pieces: `modeldir` (check, verify and fetch a Hugging Face
directory), `data` (JSONL text and chat, assistant-only loss masks, packing) and `model` (loading
under ZeRO-3, LoRA, merging and saving for export). The family itself is
`runtime.train.families.hf`."""
