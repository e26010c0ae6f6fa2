"""Remedies a notebook reaches for when the data or the model misbehaves.

`augment` (text augmentation), `balance` (class balance), `cv` (grouped cross-validation),
`domain` (domain shift checks), `search` (hyperparameter search), `sources` (extra training
sources, checked against the test rows), `group_metrics` (metrics per group). Each is optional:
a recipe turns it on with a parameter.
"""

import importlib

__all__ = ["augment", "balance", "cv", "domain", "group_metrics", "search", "sources"]


def __getattr__(name: str):
    # PEP 562: `nbutils.remedies.cv` imports the module on first use (`nb.remedies.cv` in a notebook).
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
