"""Gradual unfreezing: a group unfrozen mid-training really changes, a still-frozen group does not.

The stock Trainer builds its optimizer only over the parameters that require grad when training
starts; these tests pin that hazard and prove the callback plus LayerGroupTrainer avoid it."""

import pytest
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback

from nbutils import layers
from nbutils.optim import LayerGroupTrainer
from nbutils.unfreezing import GradualUnfreezing
from training_helpers import ALL_ARCHS, tiny_classifier, tokenized_essays, training_args


def snapshot(groups):
    return {g.name: [p.detach().clone() for _, p in g.parameters] for g in groups}


def changed(before, after, name) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))


class Recorder(TrainerCallback):
    """Weights at the end of every epoch, and which groups had gradients at each optimizer step."""

    def __init__(self, groups):
        self.groups, self.epochs, self.with_grad = groups, [], []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.with_grad.append({g.name for g in self.groups
                               if any(p.grad is not None for _, p in g.parameters)})

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs.append(snapshot(self.groups))


def make_trainer(cache, tmp_path, arch="bert", trainer_class=LayerGroupTrainer, callbacks=(), **args):
    data, tokenizer = tokenized_essays(cache, arch)
    model = tiny_classifier(cache, arch)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, trainer_class(model=model, args=training_args(tmp_path, **args), train_dataset=data,
                                data_collator=DataCollatorWithPadding(tokenizer), callbacks=list(callbacks))


def test_one_more_group_per_epoch_and_only_unfrozen_groups_change(cache, tmp_path):
    model = tiny_classifier(cache, "bert")
    groups = layers.layer_groups(model)  # embeddings, encoder.layer.0, encoder.layer.1, head
    start = snapshot(groups)
    unfreezing, recorder = GradualUnfreezing(), Recorder(groups)
    data, tokenizer = tokenized_essays(cache)
    trainer = LayerGroupTrainer(model=model, args=training_args(tmp_path, num_train_epochs=3, weight_decay=0.1),
                                train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                                callbacks=[unfreezing, recorder])
    trainer.train()
    epoch1, epoch2, epoch3 = recorder.epochs

    assert [(h["step"], h["group"]) for h in unfreezing.history] == [
        (0, "head"), (4, "encoder.layer.1"), (8, "encoder.layer.0")]
    # Epoch 1 trains the head only.
    assert changed(start, epoch1, "head")
    assert not any(changed(start, epoch1, g) for g in ("embeddings", "encoder.layer.0", "encoder.layer.1"))
    # encoder.layer.1, unfrozen after the optimizer was built, is updated in epoch 2 ...
    assert changed(epoch1, epoch2, "encoder.layer.1")
    assert not any(changed(start, epoch2, g) for g in ("embeddings", "encoder.layer.0"))
    # ... and encoder.layer.0 in epoch 3, while the still-frozen embeddings never move, although
    # they sit in the optimizer with weight decay 0.1: their gradient stays None and AdamW skips them.
    assert changed(epoch2, epoch3, "encoder.layer.0")
    assert not changed(start, epoch3, "embeddings")
    assert all(p.grad is None for _, p in groups[0].parameters)
    assert recorder.with_grad == [{"head"}] * 4 + [{"head", "encoder.layer.1"}] * 4 + \
        [{"head", "encoder.layer.1", "encoder.layer.0"}] * 4


def test_every_n_steps(cache, tmp_path):
    unfreezing = GradualUnfreezing(every_steps=3)
    model, trainer = make_trainer(cache, tmp_path, callbacks=[unfreezing], num_train_epochs=3)
    trainer.train()  # 12 steps: unfreeze at steps 3, 6, 9; the model has 4 groups
    assert [(h["step"], h["trainable_groups"]) for h in unfreezing.history] == [(0, 1), (3, 2), (6, 3), (9, 4)]
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_every_architecture(cache, tmp_path, arch):
    model = tiny_classifier(cache, arch)
    groups = layers.layer_groups(model)
    n = len(groups)
    start = snapshot(groups)
    data, tokenizer = tokenized_essays(cache, arch, n=8)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    unfreezing = GradualUnfreezing(every_steps=1)
    # One step per batch; n - 2 steps: the bottom block is unfrozen after the last step and the
    # embeddings never, so both must be unchanged and everything above them changed.
    trainer = LayerGroupTrainer(model=model, args=training_args(tmp_path, max_steps=n - 2),
                                train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                                callbacks=[unfreezing])
    trainer.train()
    end = snapshot(groups)
    assert [changed(start, end, g.name) for g in groups] == [False, False] + [True] * (n - 2)


def test_stock_trainer_never_updates_layers_frozen_before_training(cache, tmp_path):
    """The hazard itself: freeze, build the stock optimizer, unfreeze later - nothing moves."""

    class UnfreezeAfterFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            layers.unfreeze(model)

    model, trainer = make_trainer(cache, tmp_path, trainer_class=Trainer,
                                  callbacks=[UnfreezeAfterFirstStep()], num_train_epochs=1)
    groups = layers.freeze(model)
    start = snapshot(groups)
    trainer.train()
    end = snapshot(groups)
    assert all(p.requires_grad for p in model.parameters())
    assert changed(start, end, "head")
    assert not any(changed(start, end, g.name) for g in groups[:-1])


def test_layer_group_trainer_updates_layers_frozen_before_training(cache, tmp_path):
    """The same sequence with LayerGroupTrainer: its optimizer holds the frozen layers too."""

    class UnfreezeAfterFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            layers.unfreeze(model)

    model, trainer = make_trainer(cache, tmp_path, callbacks=[UnfreezeAfterFirstStep()], num_train_epochs=1)
    groups = layers.freeze(model)
    start = snapshot(groups)
    trainer.train()
    end = snapshot(groups)
    assert all(changed(start, end, g.name) for g in groups)


def test_callback_refuses_an_optimizer_without_the_frozen_groups(cache, tmp_path):
    model, trainer = make_trainer(cache, tmp_path, trainer_class=Trainer, callbacks=[GradualUnfreezing()])
    layers.freeze(model)  # the stock optimizer will hold the head only
    with pytest.raises(RuntimeError, match=r"does not hold the parameters of layer group\(s\) "
                                           r"embeddings, encoder.layer.0, encoder.layer.1.*LayerGroupTrainer"):
        trainer.train()


def test_negative_interval_is_an_error():
    with pytest.raises(ValueError, match="unfreeze_every_steps must be a whole number >= 0"):
        GradualUnfreezing(every_steps=-1)


def test_several_processes_are_refused(cache):
    from types import SimpleNamespace

    with pytest.raises(RuntimeError, match="gradual unfreezing runs in a single process"):
        GradualUnfreezing().on_train_begin(SimpleNamespace(world_size=2), None, None,
                                           model=tiny_classifier(cache, "bert"), optimizer=None)


@pytest.mark.parametrize("every_steps, resume_at", [(0, 6), (0, 4), (3, 7)])
def test_a_resumed_run_unfreezes_as_the_uninterrupted_one(cache, tmp_path, every_steps, resume_at):
    """Resuming mid-epoch (step 6 of 4-step epochs), at an epoch's end (step 4), or between two
    unfreezings (every 3 steps, resumed at 7): the callback unfreezes the groups the uninterrupted
    run had unfrozen by then, so the resumed run ends with the very same weights. (Without the
    catch-up it restarted from the head alone and trained a different model.)"""

    def run(folder, **args):
        model = tiny_classifier(cache, "bert")
        data, tokenizer = tokenized_essays(cache)
        trainer = LayerGroupTrainer(model=model, args=training_args(folder, num_train_epochs=3, **args),
                                    train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                                    callbacks=[GradualUnfreezing(every_steps=every_steps)])
        return model, trainer

    model, trainer = run(tmp_path / "whole")
    trainer.train()
    whole = {name: p.detach().clone() for name, p in model.named_parameters()}

    _, first = run(tmp_path / "cut", save_strategy="steps", save_steps=resume_at, max_steps=resume_at)
    first.train()  # stops at `resume_at` with a checkpoint, as an interrupted run leaves it
    model, second = run(tmp_path / "cut")
    second.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoints" / f"checkpoint-{resume_at}"))
    for name, p in model.named_parameters():
        assert torch.equal(p, whole[name]), f"{name} differs after resuming at step {resume_at}"
