"""k-fold cross-validation: stratified by label, and grouped by a column when one is given.

Grouping keeps every group (e.g. an essay prompt) on one side of each fold, so the score
measures unseen groups, as the hidden test set of a competition does. The training itself is
the caller's: `cross_validate` hands each fold's two tables to a function that trains a fresh
model and returns its metrics, and reports the mean and standard deviation of each metric.

A fold is scored on rows that chose nothing. Its model trains the recipe's fixed budget (its
epochs) and its last weights are scored (`FIXED_BUDGET`): had the fold's validation rows also
picked the best checkpoint (`load_best_model_at_end`), its score would be the best of several
tries on those very rows, an optimistic number. The alternative, choosing the checkpoint on a
split carved out of the fold's training rows, would cost each fold a further group of its
training rows (with grouped folds on the handful of prompts a competition has, a whole prompt of
three or four) and an evaluation every epoch, to estimate the same thing less well. The final
model still picks its checkpoint on the validation split and is scored on the test split.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def fold_indices(labels, n_folds: int, seed: int = 0, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) per fold; every row is validated exactly once."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    if not isinstance(n_folds, int) or isinstance(n_folds, bool) or n_folds < 2:
        raise ValueError(f"cv_folds must be a whole number >= 2 (0: no cross-validation), got {n_folds!r}")
    smallest = int(np.bincount(np.unique(labels, return_inverse=True)[1]).min())
    if smallest < n_folds:
        raise ValueError(f"cv_folds={n_folds}: the rarest class has only {smallest} rows, "
                         "fewer than the folds; use fewer folds")
    index = np.arange(len(labels))
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return list(splitter.split(index, labels))
    groups = np.asarray(groups)
    n_groups = len(set(groups.tolist()))
    if n_groups < n_folds:
        raise ValueError(f"cv_folds={n_folds}: the group column has only {n_groups} groups; grouped "
                         "folds need at least one group per fold")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(index, labels, groups))


# TrainingArguments for a fold's training: no evaluation, no checkpoint, no best model loaded
# back; the weights after the last step are the ones scored.
FIXED_BUDGET = {"eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False}
SELECTION = "fixed budget: the weights after the last step, no checkpoint chosen"


def fold_selection(trainer) -> dict:
    """What chose a trained fold model's weights, read from its Trainer's state (a spy on what
    it did, not on what it was asked): how many evaluations ran during training, and whether a
    best checkpoint was loaded back. The fold's rows must have chosen nothing."""
    evaluations = sum(1 for entry in trainer.state.log_history if any(k.startswith("eval_") for k in entry))
    return {"evaluations_during_training": evaluations,
            "checkpoint": "best" if trainer.state.best_model_checkpoint else "last"}


def summarize(fold_metrics: list[dict]) -> dict:
    """{metric: {"mean", "std", "folds": [per-fold values]}} over the folds."""
    summary = {}
    for name in fold_metrics[0]:
        values = [float(m[name]) for m in fold_metrics]
        summary[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "folds": values}
    return summary


def cross_validate(dataset, n_folds: int, label_column: str,
                   fit_and_score: Callable[[object, object], dict], seed: int = 0,
                   group_column: str = "") -> dict:
    """Run `fit_and_score(train_table, validation_table) -> metrics` on each fold.

    `fit_and_score` may also return `(metrics, details)`: the details (such as `fold_selection`)
    join that fold's entry in "sizes".

    Returns {"folds": n, "group_column": ..., "metrics": summarize(...), "sizes": [per fold:
    train and validation rows, and with a group column the groups validated on]}.
    """
    from nbutils.data import require_columns

    groups = None
    if group_column:
        require_columns(dataset, group_column=group_column)
        groups = list(dataset[group_column])
    folds = fold_indices(list(dataset[label_column]), n_folds, seed, groups)
    results, sizes = [], []
    for number, (train_rows, val_rows) in enumerate(folds, start=1):
        train, val = dataset.select(train_rows), dataset.select(val_rows)
        print(f"fold {number}/{n_folds}: {len(train)} training rows, {len(val)} validation rows")
        scored = fit_and_score(train, val)
        details = {}
        if isinstance(scored, tuple):
            scored, details = scored
        results.append(scored)
        sizes.append({"train": len(train), "validation": len(val), **details})
        if groups is not None:  # which groups each fold validated on, for the record
            sizes[-1]["validation_groups"] = sorted({str(groups[i]) for i in val_rows})
    return {"folds": n_folds, "group_column": group_column or None, "metrics": summarize(results),
            "sizes": sizes}


def format_summary(summary: dict) -> dict[str, str]:
    """{metric: "mean ± std"} for display."""
    return {name: f"{s['mean']:.4f} ± {s['std']:.4f}" for name, s in summary["metrics"].items()}
