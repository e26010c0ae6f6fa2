"""Hyperparameter search with Trainer.hyperparameter_search + Optuna, on the tiny BERT."""

import pytest
from transformers import DataCollatorWithPadding, TrainerCallback

from nbutils import metrics
from nbutils.remedies import search
from nbutils.optim import LayerGroupTrainer
from training_helpers import tiny_classifier, tokenized_essays, training_args

SPACE = {"learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "batch_size": [8, 16],
         "epochs": {"low": 1, "high": 2}, "warmup_ratio": {"low": 0.0, "high": 0.2},
         "weight_decay": {"low": 0.0, "high": 0.1}}


class SeenSettings(TrainerCallback):
    """What each trial's training actually ran with."""

    def __init__(self):
        self.runs = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.runs.append({"learning_rate": args.learning_rate, "batch_size": args.per_device_train_batch_size,
                          "epochs": args.num_train_epochs, "warmup_ratio": args.warmup_steps,
                          "weight_decay": args.weight_decay})


def compute_metrics(prediction):
    return metrics.binary_classification_metrics(
        prediction.label_ids, metrics.positive_probabilities(prediction.predictions))


def make_trainer(cache, tmp_path, callbacks=()):
    data, tokenizer = tokenized_essays(cache, n=48)
    split = data.train_test_split(test_size=16, seed=0)
    return LayerGroupTrainer(model_init=lambda: tiny_classifier(cache, "bert"), lr_factor=2.6,
                             args=training_args(tmp_path, eval_strategy="epoch", warmup_steps=0.1),
                             train_dataset=split["train"], eval_dataset=split["test"],
                             data_collator=DataCollatorWithPadding(tokenizer),
                             compute_metrics=compute_metrics, callbacks=list(callbacks))


def test_three_trials_each_train_with_their_settings_and_the_best_is_reported(cache, tmp_path):
    seen = SeenSettings()
    trainer = make_trainer(cache, tmp_path, [seen])
    best, objective, table, info = search.run_search(trainer, SPACE, n_trials=3, metric="roc_auc", seed=1)

    assert list(table["trial"]) == [0, 1, 2] and set(table["state"]) == {"COMPLETE"}
    assert set(SPACE) <= set(table.columns) and table["objective"].between(0, 1).all()
    assert table["learning_rate"].nunique() == 3, "each trial samples its own settings"
    # The Trainer really trained with each trial's settings (model_init + args per trial) ...
    for run, (_, row) in zip(seen.runs, table.iterrows()):
        assert run["learning_rate"] == pytest.approx(row["learning_rate"])
        assert run["batch_size"] == row["batch_size"] and run["epochs"] == row["epochs"]
        assert run["warmup_ratio"] == pytest.approx(row["warmup_ratio"])
        assert 1e-4 <= run["learning_rate"] <= 1e-2 and run["batch_size"] in (8, 16)
    # ... with discriminative rates built from that trial's learning rate.
    assert trainer.optimizer.param_groups[-1]["initial_lr"] == pytest.approx(seen.runs[-1]["learning_rate"])
    winner = table.loc[table["objective"].idxmax()]
    assert objective == winner["objective"]
    assert best == {name: winner[name] for name in SPACE}
    # Without a storage the study lives in this process's memory; every trial was this process's.
    assert info["storage"] == {"kind": "memory", "url": None}
    assert info["trials_complete"] == info["trials_this_process"] == 3 and set(table["worker"]) == {info["worker"]}


def test_the_seed_fixes_the_sampled_settings():
    import optuna

    def sample(seed):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        hp_space = search.optuna_space(SPACE)
        return [hp_space(study.ask()) for _ in range(3)]

    assert sample(3) == sample(3) != sample(4)
    first = sample(3)[0]
    assert set(first) == {"learning_rate", "per_device_train_batch_size", "num_train_epochs",
                          "warmup_steps", "weight_decay"}
    assert isinstance(first["num_train_epochs"], int) and isinstance(first["warmup_steps"], float)


@pytest.mark.parametrize("space, message", [
    ({"learning_rat": [1e-3]}, "'learning_rat' is not a training setting"),
    ({"batch_size": []}, r"hpo_space\['batch_size'\]: the list of choices is empty"),
    ({"learning_rate": {"low": 1e-3}}, r"hpo_space\['learning_rate'\]: a range is \{low, high\}"),
    ({"learning_rate": {"low": 1e-3, "high": 1e-4}}, "low must be below high"),
    ({"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}, "log-scale range needs low > 0"),
    ({"epochs": 3}, "expected a list of choices or a"),
    ({}, "hpo_space must be a non-empty mapping"),
])
def test_bad_space_is_an_error_naming_the_entry(space, message):
    with pytest.raises(ValueError, match=message):
        search.optuna_space(space)


def test_search_needs_model_init_and_a_reported_metric(cache, tmp_path):
    data, tokenizer = tokenized_essays(cache, n=16)
    plain = LayerGroupTrainer(model=tiny_classifier(cache, "bert"), args=training_args(tmp_path))
    with pytest.raises(ValueError, match="needs a Trainer built with model_init"):
        search.run_search(plain, SPACE, 1, "roc_auc")
    with pytest.raises(ValueError, match="hpo_direction must be one of maximize, minimize"):
        search.run_search(make_trainer(cache, tmp_path), SPACE, 1, "roc_auc", direction="up")
    with pytest.raises(KeyError, match="hpo_metric='auc'.*reports .*eval_roc_auc"):
        search.run_search(make_trainer(cache, tmp_path), {"learning_rate": [1e-3]}, 1, "auc")
