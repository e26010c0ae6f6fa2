"""Class imbalance: resample the training split, or weight the loss by class.

Real detection data is rarely balanced (the competition's own training file holds 3 generated
essays among 1378). A model then learns to favour the majority class; two remedies:
- resampling the training split: "oversample" repeats minority rows, "undersample" drops
  majority rows, until the classes are the same size;
- "class_weights": keep the data, weight each class's loss by n / (classes * its count)
  (scikit-learn's "balanced" weights), through the Trainer's `compute_loss_func`.
Only the training split is ever rebalanced: validation and test keep the real distribution.
"""

from __future__ import annotations

import numpy as np

METHODS = ("none", "oversample", "undersample", "class_weights")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"balance must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def class_counts(labels) -> dict[int, int]:
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def resample(dataset, label_column: str, method: str, seed: int = 0):
    """The dataset with equally many rows per class ("oversample" or "undersample"), shuffled."""
    check_method(method)
    if method not in ("oversample", "undersample"):
        return dataset
    labels = np.asarray(list(dataset[label_column]))
    counts = class_counts(labels)
    target = max(counts.values()) if method == "oversample" else min(counts.values())
    rng = np.random.default_rng(seed)
    rows = []
    for label in counts:
        members = np.flatnonzero(labels == label)
        if method == "oversample":  # every row once, then random repeats up to the target
            extra = rng.choice(members, target - len(members), replace=True)
            rows.append(np.concatenate([members, extra]))
        else:
            rows.append(rng.choice(members, target, replace=False))
    return dataset.select(rng.permutation(np.concatenate(rows)))


def class_weights(labels, n_classes: int = 2) -> np.ndarray:
    """Balanced weights n / (n_classes * count), one per class index."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"balance='class_weights': class(es) {np.flatnonzero(counts == 0).tolist()} "
                         "have no training rows")
    return len(labels) / (n_classes * counts)


def weighted_cross_entropy(weights):
    """A `compute_loss_func` for the Trainer: cross-entropy with per-class weights.

    Summed and divided by `num_items_in_batch` (the rows of the whole accumulated batch), which
    is what the Trainer expects from a `compute_loss_func` under gradient accumulation.
    """
    import torch

    weight = torch.as_tensor(np.asarray(weights), dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        total = torch.nn.functional.cross_entropy(
            logits.view(-1, logits.shape[-1]).float(), labels.view(-1),
            weight=weight.to(logits.device), reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return total / count

    return loss
