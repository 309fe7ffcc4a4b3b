"""The onnxruntime-genai generation backend: a key/value cache, the model's tokenizer and chat template.

Serves artifacts whose manifest says `language_model.runtime: "onnxruntime-genai"`: a version
directory as the library's model builder writes it (`model.onnx` + `model.onnx.data`,
`genai_config.json`, the tokenizer files, `chat_template.jinja` where the model has one). The
`og.Model` and `og.Tokenizer` are loaded once per version (`load`) and shared by its requests;
each request gets its own `og.Generator` (its own KV cache), driven token by token in a worker
thread (`runtime.serve.generation`). The library runs the graph with the execution provider its
`genai_config.json` names, with the server's `--intra-op-threads`; on a GPU serving host the CUDA
build of the same package is installed and the config names the CUDA provider.

The manifest's `inputs`/`outputs` (`input_ids` -> `logits`) describe the model to clients; they
are not checked against the graph, whose inputs also hold the cache.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from runtime.repository.artifact import ArtifactError
from runtime.serve.generation import Sampling
from runtime.serve.protocol import RequestError

log = logging.getLogger("stratus.serve")

RUNTIME = "onnxruntime-genai"
"""`language_model.runtime` of the artifacts this backend serves."""
CONFIG_FILE = "genai_config.json"


class GenaiBackend:
    """One loaded version: `og.Model` + `og.Tokenizer`; `tokens` runs one `og.Generator`."""

    slides = False

    def __init__(self, version_dir: Path, info: dict, intra_op_threads: int = 1):
        import onnxruntime_genai as og

        self._og = og
        config = og.Config(str(version_dir))
        # Like the server's ONNX Runtime sessions (runtime.serve.model.session_options): each
        # concurrent generation is one thread, so N slots use N cores, not N x cores.
        threads = {"intra_op_num_threads": intra_op_threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": threads}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.max_seq_len = int(info["max_seq_len"])
        self.chat_template = bool(info.get("chat_template", False))
        self.vocab_size = int(
            info.get("vocab_size") or json.loads((version_dir / CONFIG_FILE).read_text())["model"]["vocab_size"]
        )
        self.eos = frozenset(int(t) for t in info.get("eos_token_ids", ())) or frozenset(
            int(t) for t in self.tokenizer.eos_token_ids
        )

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def render_chat(self, messages: list[dict]) -> str:
        try:
            return self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        except RuntimeError as e:  # the template itself failed (e.g. it refuses a role order)
            raise RequestError(400, f"the model's chat template refused these messages: {e}") from None

    def tokens(self, req: Sampling) -> Iterator[tuple[int, str, bool]]:
        og = self._og
        params = og.GeneratorParams(self.model)
        options: dict = {"max_length": len(req.prompt_ids) + req.max_tokens, "do_sample": req.temperature > 0}
        if req.temperature > 0:
            # top_k 0 means no limit; the library always applies its top_k (default 50)
            options.update(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k or self.vocab_size)
            if req.seed is not None:
                options["random_seed"] = req.seed % (1 << 31)  # the library takes a 32-bit int
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        generator.append_tokens(list(req.prompt_ids))  # the prompt's forward pass fills the cache
        stream = self.tokenizer.create_stream()
        for _ in range(req.max_tokens):
            if generator.is_done():
                break
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self.eos:
                yield 0, "", True
                return
            yield 1, stream.decode(token), False


def load(version_dir: Path, manifest: dict, intra_op_threads: int = 1) -> GenaiBackend:
    """Load a verified genai version directory and warm it up (a two-token greedy generation).

    Raises:
        ArtifactError: the manifest's `language_model` section or the genai config is missing or
            malformed.
    """
    info = manifest.get("language_model")
    if not isinstance(info, dict) or not isinstance(info.get("max_seq_len"), int) or info["max_seq_len"] < 2:
        raise ArtifactError("manifest.json: language_model needs an integer 'max_seq_len' >= 2; re-export the model")
    if CONFIG_FILE not in manifest["files"]:
        raise ArtifactError(f"{CONFIG_FILE}: missing from the manifest of an {RUNTIME} artifact; re-export the model")
    backend = GenaiBackend(version_dir, info, intra_op_threads)
    warm = Sampling(prompt_ids=tuple(backend.encode("warm-up")) or (0,), max_tokens=2)
    for _ in backend.tokens(warm):
        pass
    return backend
