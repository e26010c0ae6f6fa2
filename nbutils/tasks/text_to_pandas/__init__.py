"""Text-to-pandas code generation scored by execution (notebooks/text_to_pandas.ipynb).

`table_context` (the table schema given to the model) and `text_to_code` (prompts, targets,
decoding, text metrics). The sandbox that runs the model's code is `nbutils.sandbox`.
"""
