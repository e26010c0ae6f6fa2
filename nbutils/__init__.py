"""Shared utilities of the LLM fine-tuning notebook collection.

Small modules named for what they do: `data` (loading and checking tables), `metrics`,
`baselines`, `plots`, `record` (the run record), `params` (checked notebook parameters),
`runtime` (hardware and precision), `runner` (papermill, headless runs), and the offline smoke
inputs: `samples`, `tiny_models`, `fixtures`. Nothing heavy is imported here, so
`import nbutils` is instant; each module imports torch/transformers only where it needs them.
"""

__version__ = "0.1.0"
