"""Task metrics, computed with scikit-learn from probabilities (never from hard 0/1 labels)."""

from __future__ import annotations

import numpy as np


def positive_probabilities(logits) -> np.ndarray:
    """Probability of class 1 from a (n, 2) array of logits (softmax, numerically stable)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"expected logits of shape (n, 2), got {logits.shape}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp[:, 1] / exp.sum(axis=1)


def binary_classification_metrics(labels, probabilities, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall and F1 at `threshold`; ROC AUC from the probabilities.

    ROC AUC ranks by score: from hard predictions it collapses to one point of the curve
    (the original DAIGT notebooks' mistake), so it always takes the probabilities here.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {probabilities.shape} differ in shape")
    predictions = (probabilities >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, average="binary", zero_division=0)
    auc = roc_auc_score(labels, probabilities) if len(np.unique(labels)) == 2 else float("nan")
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(auc),
    }
