"""k-fold cross-validation: stratified folds, grouped folds, the mean ± std summary, errors."""

import numpy as np
import pytest
from datasets import Dataset

from nbutils import cv

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
