"""Gradual unfreezing (ULMFiT) as a Trainer callback.

Training starts with only the head trainable; then one more layer group, from the top down, is
unfrozen at the start of every epoch (or every `every_steps` optimizer steps), until the whole
model trains. Lower layers hold the most general features: unfreezing them last keeps the
fresh, randomly initialised head from wrecking them with large early gradients.

The Trainer builds its optimizer before training starts, only over the parameters that require
grad at that moment; a group unfrozen later is updated only if the optimizer already holds it.
Use `nbutils.optim.LayerGroupTrainer`, whose optimizer holds every tunable parameter. The
callback checks this when training starts and stops with an error otherwise, instead of
silently training a model whose lower layers never change.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from nbutils.layers import freeze_to, layer_groups, tunable_parameters


class GradualUnfreezing(TrainerCallback):
    def __init__(self, every_steps: int = 0, blocks_per_group: int = 1):
        if not isinstance(every_steps, int) or every_steps < 0:
            raise ValueError(f"unfreeze_every_steps must be a whole number >= 0 (0: every epoch), "
                             f"got {every_steps!r}")
        self.every_steps = every_steps
        self.blocks_per_group = blocks_per_group
        self.history: list[dict] = []  # one entry per unfreezing: step, epoch, group, trainable groups

    def _unfreeze_next(self, model, state) -> None:
        if self.trainable >= len(self.groups):
            return
        self.trainable += 1
        freeze_to(model, -self.trainable, self.blocks_per_group)
        self.history.append({"step": state.global_step, "epoch": round(float(state.epoch or 0), 3),
                             "group": self.groups[-self.trainable].name,
                             "trainable_groups": self.trainable})

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if getattr(args, "world_size", 1) > 1:
            # DDP fixes the set of parameters it synchronizes when it wraps the model, before
            # this callback runs; changing requires_grad afterwards is not supported.
            raise RuntimeError("gradual unfreezing runs in a single process; DDP cannot follow "
                               "parameters that are frozen and unfrozen during training")
        self.groups = layer_groups(model, self.blocks_per_group)
        held = {id(p) for group in getattr(optimizer, "param_groups", []) for p in group["params"]}
        tunable = {id(p) for p in tunable_parameters(model)}
        missing = [g.name for g in self.groups
                   if any(id(p) in tunable and id(p) not in held for _, p in g.parameters)]
        if optimizer is None or missing:
            raise RuntimeError(
                "gradual unfreezing: the optimizer does not hold the parameters of layer group(s) "
                f"{', '.join(missing) or 'all'}, so they would never be updated after unfreezing "
                "(the Trainer builds its optimizer only over parameters that require grad when "
                "training starts). Train with nbutils.optim.LayerGroupTrainer, and do not freeze "
                "the model before training.")
        self.history, self.trainable, self.epochs_begun = [], 0, 0
        self._unfreeze_next(model, state)  # the head only
        self._catch_up(model, state)

    def _catch_up(self, model, state) -> None:
        # Resuming from a checkpoint: the Trainer restores its state before this callback runs,
        # so unfreeze the groups an uninterrupted run would have unfrozen by now. Otherwise the
        # resumed run would restart from the head alone and train a different model.
        if self.every_steps:
            for _ in range(state.global_step // self.every_steps):
                self._unfreeze_next(model, state)
        elif state.global_step:
            # The Trainer calls on_epoch_begin again for the epoch it resumes in (even mid-epoch),
            # so count only the epochs completed: that call does the rest.
            self.epochs_begun = int(math.floor(float(state.epoch or 0) + 1e-6))
            for _ in range(max(0, self.epochs_begun - 1)):
                self._unfreeze_next(model, state)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self.epochs_begun += 1
        if not self.every_steps and self.epochs_begun > 1:
            self._unfreeze_next(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._unfreeze_next(model, state)
