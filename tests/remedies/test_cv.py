"""k-fold cross-validation: stratified folds, grouped folds, the mean ± std summary, errors."""

import numpy as np
import pytest
from datasets import Dataset

from nbutils.remedies import cv

LABELS = np.array([0, 1] * 30)
GROUPS = np.array(["a", "b", "c", "d", "e", "f"] * 10)


def test_stratified_folds_validate_every_row_once_and_keep_the_class_balance():
    folds = cv.fold_indices(LABELS, 5, seed=0)
    assert len(folds) == 5
    validated = np.concatenate([val for _, val in folds])
    assert sorted(validated.tolist()) == list(range(len(LABELS)))
    for train, val in folds:
        assert not set(train) & set(val)
        assert LABELS[val].mean() == pytest.approx(0.5)


def test_grouped_folds_never_put_a_group_on_both_sides():
    folds = cv.fold_indices(LABELS, 3, seed=0, groups=GROUPS)
    for train, val in folds:
        assert not set(GROUPS[train]) & set(GROUPS[val])
        assert set(LABELS[val]) == {0, 1}
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(len(LABELS)))


def test_cross_validate_hands_each_fold_to_the_trainer_and_summarizes():
    table = Dataset.from_dict({"labels": LABELS.tolist(), "prompt": GROUPS.tolist(),
                               "x": list(range(len(LABELS)))})
    seen = []

    def fit_and_score(train, val):
        seen.append((set(train["prompt"]), set(val["prompt"])))
        return {"accuracy": len(val) / 100, "roc_auc": 0.5}

    summary = cv.cross_validate(table, 3, "labels", fit_and_score, seed=0, group_column="prompt")
    assert len(seen) == 3 and all(not tr & va for tr, va in seen)
    assert summary["folds"] == 3 and summary["group_column"] == "prompt"
    validated = [g for s in summary["sizes"] for g in s["validation_groups"]]
    assert sorted(validated) == ["a", "b", "c", "d", "e", "f"]  # each group validated in one fold
    sizes = [s["validation"] for s in summary["sizes"]]
    assert summary["metrics"]["accuracy"]["folds"] == [s / 100 for s in sizes]
    assert summary["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(sizes) / 100)
    assert summary["metrics"]["accuracy"]["std"] == pytest.approx(np.std(sizes) / 100)
    assert summary["metrics"]["roc_auc"] == {"mean": 0.5, "std": 0.0, "folds": [0.5] * 3}
    assert cv.format_summary(summary)["roc_auc"] == "0.5000 ± 0.0000"


def test_missing_group_column_is_an_error_naming_it():
    table = Dataset.from_dict({"labels": LABELS.tolist()})
    with pytest.raises(KeyError, match="group_column='prompt_nam' is not a column of the data; columns present: labels"):
        cv.cross_validate(table, 3, "labels", lambda tr, va: {}, group_column="prompt_nam")


@pytest.mark.parametrize("kwargs, message", [
    ({"n_folds": 1}, "cv_folds must be a whole number >= 2"),
    ({"n_folds": 7, "groups": GROUPS}, "cv_folds=7: the group column has only 6 groups"),
    ({"n_folds": 4, "labels": [0] * 20 + [1] * 3}, "cv_folds=4: the rarest class has only 3 rows"),
])
def test_impossible_folds_are_errors(kwargs, message):
    kwargs = {"labels": LABELS, **kwargs}
    with pytest.raises(ValueError, match=message):
        cv.fold_indices(**kwargs)


# --- a fold's scoring rows choose nothing


def spied_fold(cache, tmp_path, fixed_budget: bool):
    """Train one fold as the detection notebook's make_trainer configures it (evaluate and save
    each epoch, load the best model by the validation metric), with the fold's validation rows
    as its eval_dataset, and `cv.FIXED_BUDGET` on top or not. A spy on Trainer.evaluate records
    the row ids of every evaluation during training; then the fold is scored on its rows.
    Returns (row ids that chose the weights, row ids scored, cv.fold_selection)."""
    from transformers import DataCollatorWithPadding, Trainer

    from training_helpers import tiny_classifier, tokenized_essays, training_args

    tokenized, tokenizer = tokenized_essays(cache, n=24)
    tokenized = tokenized.add_column("row_id", list(range(24)))
    fold_train, fold_val = tokenized.select(range(16)), tokenized.select(range(16, 24))
    settings = dict(num_train_epochs=2, eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
                    load_best_model_at_end=True, metric_for_best_model="loss", remove_unused_columns=True)
    args = training_args(tmp_path / ("fixed" if fixed_budget else "best"),
                         **{**settings, **(cv.FIXED_BUDGET if fixed_budget else {})})
    chose = set()

    class SpiedTrainer(Trainer):
        def evaluate(self, eval_dataset=None, *a, **k):
            chose.update((eval_dataset if eval_dataset is not None else self.eval_dataset)["row_id"])
            return super().evaluate(eval_dataset, *a, **k)

    trainer = SpiedTrainer(model=tiny_classifier(cache, "bert"), args=args, train_dataset=fold_train,
                           eval_dataset=fold_val, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    scored = set(fold_val["row_id"])
    trainer.predict(fold_val)
    return chose, scored, cv.fold_selection(trainer)


def test_a_fold_is_never_scored_on_the_rows_that_chose_its_weights(cache, tmp_path):
    """With the fixed budget the fold trains its epochs and keeps its last weights: no row chose
    anything, so none of the scored rows did. Without it (the notebook's arguments before), the
    very rows the fold is scored on picked its best epoch: the spy catches that."""
    chose, scored, selection = spied_fold(cache, tmp_path, fixed_budget=True)
    assert not chose & scored and chose == set()
    assert selection == {"evaluations_during_training": 0, "checkpoint": "last"}

    chose, scored, selection = spied_fold(cache, tmp_path, fixed_budget=False)
    assert chose == scored  # what the fixed budget prevents
    assert selection == {"evaluations_during_training": 2, "checkpoint": "best"}


def test_fold_details_join_the_folds_record():
    table = Dataset.from_dict({"labels": LABELS.tolist(), "prompt": GROUPS.tolist()})
    summary = cv.cross_validate(table, 3, "labels", lambda tr, va: ({"roc_auc": 0.5}, {"checkpoint": "last"}),
                                group_column="prompt")
    assert [s["checkpoint"] for s in summary["sizes"]] == ["last"] * 3
    assert summary["metrics"]["roc_auc"]["mean"] == 0.5
