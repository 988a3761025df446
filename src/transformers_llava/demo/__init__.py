"""The embedded demo and the tiny pieces it is made of — no downloads, a few minutes on 2 CPU cores.

- `run`: `transformers-llava demo` — tiny towers, the synthetic task, both stages through `SFTTrainer`, and an
  evaluation next to an image-blind baseline.
- `tiny`: tiny CLIP / Llama towers and a tokenizer built in-process (`save_tiny_towers`, `build_tiny_llava`), also
  used by the tests and benchmarks.
- `synthetic`: the synthetic visual task (`write_synthetic_task`) in the original LLaVA data formats.

Importing this package loads nothing heavy; import the module you need.
"""
