"""Several training processes: `launch` (starting them from a notebook), `distributed` (DDP or
FSDP2 on the Trainer), `memory` (what each process will hold, before anything loads).
"""

import importlib

__all__ = ['distributed', 'launch', 'memory']


def prepare(trainer):
    """The notebook's one multi-process call on its Trainer (`distributed.prepare`)."""
    from nbutils.parallel.distributed import prepare as prepare_trainer

    return prepare_trainer(trainer)


def __getattr__(name: str):
    # PEP 562: `nbutils.parallel.<module>` is imported on first use, so `import nbutils` stays instant.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
