"""The fine-tuning strategies study (notebooks/finetuning_strategies.ipynb).

`study` (the strategies compared and how each is set up), `forgetting` (what the model
forgets of general text while it is tuned).
"""
