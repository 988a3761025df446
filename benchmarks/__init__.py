"""Side-by-side benchmark of this package's LLaVA stack against transformers' built-in Llava + TRL.

Run from the repository root: `python -m benchmarks.run` (see benchmarks/run.py).
"""
