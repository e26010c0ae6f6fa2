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


def choose_threshold(labels, scores) -> tuple[float, float]:
    """The cut on `scores` (validation) with the best accuracy there, and that accuracy.

    The detection notebook and the ensemble both take their decision threshold from here: a
    fixed 0.5 assumes calibrated probabilities, which a model scoring essays of unseen prompts
    rarely gives (ROC AUC can stay near 1 while accuracy at 0.5 falls to chance).

    Among equally accurate cuts the highest is taken, then moved halfway down to the next lower
    score, so that validation predictions are unchanged and a test essay scored a little below
    the lowest generated validation essay is still called generated.
    """
    from sklearn.metrics import roc_curve

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fpr, tpr, cuts = roc_curve(labels, scores, drop_intermediate=False)
    positives = labels.sum()
    accuracy = (tpr * positives + (1 - fpr) * (len(labels) - positives)) / len(labels)
    accuracy[~np.isfinite(cuts)] = -1  # the cut above every score calls nothing generated
    best = int(np.argmax(accuracy))
    lower = scores[scores < cuts[best]]
    cut = (cuts[best] + lower.max()) / 2 if lower.size else cuts[best]
    return float(cut), float(accuracy[best])


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _sentences_per_line(text: str) -> str:
    """ROUGE-Lsum scores sentence by sentence and reads sentences as lines: put each on its own.
    (A regex split: nltk's punkt model would have to be downloaded.)"""
    import re

    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


def rouge_scores(predictions, references, use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F1 (0 to 1; papers print them times 100) with Google's `rouge_score`,
    Porter stemming on, as the SAMSum and FLAN-T5 results are reported.

    `evaluate.load("rouge")` wraps the same package but fetches a script from the hub.
    """
    from rouge_score import rouge_scorer

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("no references to score against")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(_sentences_per_line(reference), _sentences_per_line(prediction))
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {key: totals[key] / len(references) for key in ROUGE_KEYS}
