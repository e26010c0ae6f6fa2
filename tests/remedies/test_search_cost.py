"""A search that fits a Kaggle disk: trials keep no checkpoints, can run on a subsample of the
training rows, and the expected disk and time are known before it starts."""

import pytest
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer

from nbutils import metrics
from nbutils.remedies import search
from training_helpers import tiny_classifier, tokenized_essays, training_args

SPACE = {"learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "epochs": [1, 2]}


def compute_metrics(prediction):
    return metrics.binary_classification_metrics(
        prediction.label_ids, metrics.positive_probabilities(prediction.predictions))


def test_trials_keep_no_checkpoints(cache, tmp_path):
    data, tokenizer = tokenized_essays(cache, n=40)
    split = data.train_test_split(test_size=12, seed=0)
    # Arguments as the notebook's final training has them: a checkpoint each epoch, the best
    # one loaded back at the end.
    args = training_args(tmp_path, eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
                         load_best_model_at_end=True, metric_for_best_model="roc_auc")
    trainer = Trainer(model_init=lambda: tiny_classifier(cache, "bert"), args=args,
                      train_dataset=split["train"], eval_dataset=split["test"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)
    best, objective, table, _ = search.run_search(trainer, SPACE, n_trials=2, metric="roc_auc", seed=0)
    assert set(table["state"]) == {"COMPLETE"} and 0 <= objective <= 1
    saved = [p for p in tmp_path.rglob("*") if p.name.startswith("checkpoint-")]
    assert not saved, f"trials saved checkpoints: {saved}"
    # the trainer's own settings are back for whatever uses it next
    assert trainer.args.load_best_model_at_end and trainer.args.save_strategy == "epoch"


def test_subsample_keeps_the_label_shares_and_is_seeded():
    data = Dataset.from_dict({"labels": [0] * 80 + [1] * 20, "x": list(range(100))})
    sample = search.subsample(data, 30, seed=3)
    assert len(sample) == 30 and sum(sample["labels"]) == 6
    assert sample["x"] == search.subsample(data, 30, seed=3)["x"] != search.subsample(data, 30, seed=4)["x"]
    assert search.subsample(data, 0) is data and search.subsample(data, 500) is data
    with pytest.raises(ValueError, match="hpo_train_rows"):
        search.subsample(data, -1)


def test_expected_cost_of_the_full_roberta_search():
    # roberta-base (125M parameters), 20 trials of up to 3 epochs on 10,000 essays of 512 tokens
    cost = search.expected_cost(125_000_000, 20, 10_000, 4_000, 512, search.max_epochs(
        {"epochs": [1, 2, 3]}, 2))
    assert cost["max_epochs"] == 3.0
    # 20 x 3 x 512 x (6 x 10,000 + 2 x 4,000) x 125M = 261 PFLOP; at 15 TFLOP/s about 4.8 hours
    assert cost["pflop"] == pytest.approx(261.12)
    assert cost["hours"] == pytest.approx(261.12e15 / 15e12 / 3600)
    # two 1.5 GB checkpoints per trial would have been 60 GB; now nothing
    assert cost["checkpoint_gb"] == pytest.approx(1.5)
    assert cost["disk_gb_if_trials_kept_checkpoints"] == pytest.approx(60.0) and cost["disk_gb"] == 0
    assert search.max_epochs({"epochs": {"low": 1, "high": 4}}, 2) == 4.0
    assert search.max_epochs({}, 2) == 2.0
