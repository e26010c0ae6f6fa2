"""Instruction tuning with TRL (notebooks/instruction_tune.ipynb).

`instructions` (instruction data sets: formats, templates, malformed rows), `causal_lm`
(completion-only labels, packing checks and generation for causal language models).
"""
