"""Trainer callbacks shared by the notebooks."""

from __future__ import annotations

import math

from transformers import TrainerCallback


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop training with a clear message as soon as a logged training loss is NaN or infinite.

    By default the Trainer *hides* such losses from its logs (`logging_nan_inf_filter`) and
    trains on, wasting the rest of the run on a broken model. This callback needs that filter
    off, and checks the averaged loss at every logging step.
    """

    def __init__(self, hint: str = ""):
        self.hint = hint

    def on_train_begin(self, args, state, control, **kwargs):
        if args.logging_nan_inf_filter:
            raise ValueError("StopOnNonFiniteLoss needs TrainingArguments(logging_nan_inf_filter=False): "
                             "with the filter on, the Trainer hides non-finite losses from the log")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            lr = (logs or {}).get("learning_rate")
            message = (f"training loss became {loss} at step {state.global_step} "
                       f"(epoch {state.epoch:.2f}, learning rate {lr}); training stopped. "
                       "Try a lower learning_rate or more warmup")
            if args.fp16:
                message += "; fp16 overflows in some models (T5/FLAN-T5 in particular): use bf16 or fp32"
            raise NonFiniteLossError(message + (f". {self.hint}" if self.hint else "."))
