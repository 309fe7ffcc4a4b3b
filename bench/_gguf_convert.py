"""Convert a Hugging Face directory to an f32 GGUF with llama.cpp's own converter (for bench/llm_serve.py).

    python bench/_gguf_convert.py LLAMA_CPP_SRC HF_DIR OUT.gguf

`LLAMA_CPP_SRC` is llama.cpp's source tree (`convert_hf_to_gguf.py`, `conversion/`, `gguf-py/`;
the `vendor/llama.cpp` folder of the llama-cpp-python source distribution). The converter knows a
BPE tokenizer's pre-tokenizer by a hash of how it splits a test text, and it does not know the
byte-level BPE the benchmark's models are made with (`stratus.tinyllm`); that tokenizer splits
text with GPT-2's pattern (`ByteLevel`, no prefix space), so it is named `gpt-2` here. Nothing else
of the converter changes.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    src, hf_dir, out = (Path(a) for a in sys.argv[1:4])
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    sys.argv = ["convert_hf_to_gguf.py", str(hf_dir), "--outfile", str(out), "--outtype", "f32"]
    runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")


if __name__ == "__main__":
    main()
