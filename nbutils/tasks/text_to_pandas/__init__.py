"""Text-to-pandas code generation scored by execution (notebooks/text_to_pandas.ipynb).

`table_context` (the table schema given to the model), `text_to_code` (prompts, targets,
decoding), and the sandbox that runs the model's code: `code_exec` (the pool of contained
workers and the evaluator), `sandbox_allowlist` (the static check), `sandbox_jail` (the
operating-system containment), `result_compare` (comparing a result with the reference).
"""
