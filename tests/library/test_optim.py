"""Discriminative learning rates: read back from the optimizer the Trainer actually uses."""

import pytest
from transformers import DataCollatorWithPadding, TrainerCallback

from nbutils import layers
from nbutils.optim import LayerGroupTrainer, discriminative_learning_rates, learning_rates_by_group
from training_helpers import ALL_ARCHS, tiny_classifier, tokenized_essays, training_args


def test_ulmfit_factor_is_the_default_and_decay_is_its_inverse():
    assert discriminative_learning_rates(4, 1e-3) == pytest.approx([1e-3 / 2.6 ** 3, 1e-3 / 2.6 ** 2, 1e-3 / 2.6, 1e-3])
    assert discriminative_learning_rates(3, 1.0, decay=0.8) == pytest.approx([0.64, 0.8, 1.0])
    assert discriminative_learning_rates(3, 1.0, factor=1.0) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("kwargs, message", [
    ({"factor": 0.5}, "lr_factor must be >= 1"), ({"decay": 1.5}, r"lr_decay must lie in \(0, 1\]"),
    ({"decay": 0.0}, r"lr_decay must lie in \(0, 1\]")])
def test_bad_factor_or_decay_is_an_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        discriminative_learning_rates(3, 1.0, **kwargs)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_each_layer_group_gets_its_rate_in_the_trainers_optimizer(cache, tmp_path, arch):
    model = tiny_classifier(cache, arch)
    layers.freeze(model)  # frozen groups must be in the optimizer all the same
    trainer = LayerGroupTrainer(model=model, args=training_args(tmp_path, learning_rate=1e-3, weight_decay=0.05),
                                lr_factor=2.6)
    optimizer = trainer.create_optimizer()
    groups = layers.layer_groups(model)
    rates = learning_rates_by_group(optimizer)
    for depth, group in enumerate(reversed(groups)):  # the head first, then down
        expected = 1e-3 / 2.6 ** depth
        assert rates.get(group.name, rates.get(group.name + " (no decay)")) == pytest.approx(expected), group.name
    held = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(held) == len({id(p) for p in held}) == len(list(model.parameters()))
    for g in optimizer.param_groups:  # the Trainer's decay rule: no decay for biases and norms
        names = {n for lg in groups for n, p in lg.parameters if any(p is q for q in g["params"])}
        if g["name"].endswith("(no decay)"):
            assert g["weight_decay"] == 0 and all("bias" in n or "norm" in n.lower() for n in names), names
        else:
            assert g["weight_decay"] == 0.05 and not any(n.endswith("bias") for n in names)


def test_layerwise_decay_and_the_schedule_keeps_the_ratios(cache, tmp_path):
    class MidSchedule(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            if state.global_step == 2:
                self.rates = {g["name"]: g["lr"] for g in optimizer.param_groups}

    data, tokenizer = tokenized_essays(cache)
    model = tiny_classifier(cache, "bert")
    mid = MidSchedule()
    trainer = LayerGroupTrainer(model=model, args=training_args(tmp_path, learning_rate=1e-3,
                                                                lr_scheduler_type="linear", num_train_epochs=1),
                                train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                                callbacks=[mid], lr_decay=0.5, blocks_per_group=2)
    trainer.train()
    rates = learning_rates_by_group(trainer.optimizer)
    assert rates == pytest.approx({"embeddings": 2.5e-4, "embeddings (no decay)": 2.5e-4,
                                   "encoder.layer.0-1": 5e-4, "encoder.layer.0-1 (no decay)": 5e-4,
                                   "head": 1e-3, "head (no decay)": 1e-3})
    # Mid-schedule the current rates have decayed, but each group keeps its share.
    current = mid.rates
    assert 0 < current["head"] < 1e-3
    assert current["embeddings"] / current["head"] == pytest.approx(0.25)


def test_peft_optimizer_holds_only_adapter_weights(cache, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_classifier(cache, "roberta"),
                           LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    trainer = LayerGroupTrainer(model=model, args=training_args(tmp_path), lr_factor=2.6)
    held = {id(p) for g in trainer.create_optimizer().param_groups for p in g["params"]}
    adapters = {id(p) for n, p in model.named_parameters() if "lora_" in n or "modules_to_save" in n}
    assert held == adapters
    assert set(learning_rates_by_group(trainer.optimizer)) >= {"encoder.layer.0", "head"}
