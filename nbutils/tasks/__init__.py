"""One home per project: the helpers only one notebook needs.

`detection` (detect_ai_text), `ensemble` (detect_ensemble), `summarization`
(summarize_dialogues), `strategies` (finetuning_strategies: the study and its forgetting
probe), `instruction_tuning` (instruction_tune), `text_to_pandas` (text_to_pandas, with its
sandbox). What two projects share belongs in the library (`nbutils`), not here.
"""

import importlib

__all__ = ["detection", "ensemble", "instruction_tuning", "strategies", "summarization", "text_to_pandas"]


def __getattr__(name: str):
    # PEP 562: `nbutils.tasks.summarization` imports the module on first use.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
