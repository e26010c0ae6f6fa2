"""Run plumbing: what every notebook does around its recipe, in one place.

`setup` (the set-up cell's one call), `params` (checked parameters), `environment` (Kaggle, Colab
or local; run folders), `runtime` (hardware, precision), `secrets` (tokens, never printed),
`checkpoints` (what trained a checkpoint, and whether to resume it), `record` (the run record),
`row_report` (malformed rows, the data report), `quiet` (log noise), `model_card`, `callbacks`.
"""

import importlib

__all__ = ['callbacks', 'checkpoints', 'environment', 'model_card', 'params', 'quiet', 'record', 'row_report', 'runtime', 'secrets', 'setup']


def start(namespace, **options):
    """The set-up cell's one call (`nbutils.run.setup.start_notebook`): returns the `Run`."""
    from nbutils.run.setup import start_notebook

    return start_notebook(namespace, **options)


def __getattr__(name: str):
    # PEP 562: `nbutils.run.<module>` is imported on first use, so `import nbutils` stays instant.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
