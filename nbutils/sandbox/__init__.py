"""The sandbox that runs model-generated pandas code: `code_exec` (the pool of contained workers
and the evaluator), `allowlist` (the static check), `jail` (the operating-system containment),
`result_compare` (comparing a result with the reference).
"""

import importlib

__all__ = ['allowlist', 'code_exec', 'jail', 'result_compare']


def __getattr__(name: str):
    # PEP 562: `nbutils.sandbox.<module>` is imported on first use, so `import nbutils` stays instant.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
