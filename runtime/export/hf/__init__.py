"""Export primitives of the `hf-causal-lm` family (its exporter: `runtime.export.families.hf`).

- `hfdir`: the consolidated model as a Hugging Face directory (LoRA merged, safetensors, the
  checkpoint's tokenizer files) and the text windows the gate and the heal read;
- `layers`: decoder-layer pruning by block input/output similarity, and the heal fine-tune;
- `build`: the served model, built by onnxruntime-genai's model builder (int4/int8/fp32 with a
  key/value cache) from such a directory;
- `evaluate`: perplexity of the torch model and of the built ONNX graph, greedy generation and
  latency with onnxruntime-genai's generator.
"""
