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


def rouge_per_row(predictions, references, use_stemmer: bool = True) -> dict[str, np.ndarray]:
    """ROUGE-1/2/L/Lsum F1 of each prediction against its reference (0 to 1), one array per key,
    with Google's `rouge_score`, Porter stemming on, as the SAMSum and FLAN-T5 results are
    reported. Their means are `rouge_scores`; the rows themselves are what a bootstrap interval
    resamples (`bootstrap_interval(np.mean, scores["rougeLsum"])`).

    `evaluate.load("rouge")` wraps the same package but fetches a script from the hub.
    """
    from rouge_score import rouge_scorer

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("no references to score against")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)
    rows = {key: np.empty(len(references), dtype=np.float64) for key in ROUGE_KEYS}
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        scores = scorer.score(_sentences_per_line(reference), _sentences_per_line(prediction))
        for key in ROUGE_KEYS:
            rows[key][i] = scores[key].fmeasure
    return rows


def rouge_scores(predictions, references, use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F1 (0 to 1; papers print them times 100): the means of
    `rouge_per_row`."""
    rows = rouge_per_row(predictions, references, use_stemmer)
    # Summed in row order, as before the per-row scores were kept: the same values to the bit.
    return {key: sum(rows[key].tolist()) / len(rows[key]) for key in ROUGE_KEYS}


# --- Uncertainty: every headline number is printed with a bootstrap interval over test rows ---

RESAMPLES = 1000
LEVEL = 0.95


def strata(labels=None, groups=None) -> np.ndarray | None:
    """Stratum of each row for the bootstrap: its label, or its (group, label) pair where groups
    exist (detection: the essay's prompt). Resampling within strata keeps each class's and each
    prompt's share of the test rows as they were, so every resample has both classes (ROC AUC
    stays defined) and the interval measures which rows were drawn, not how many per class.
    Which prompts are in test at all is a different noise: the split-seed repeats measure it."""
    if labels is None and groups is None:
        return None
    parts = [np.asarray(p).astype(str) for p in (groups, labels) if p is not None]
    keys = parts[0] if len(parts) == 1 else np.char.add(np.char.add(parts[0], "\x1f"), parts[1])
    return np.unique(keys, return_inverse=True)[1]


def _resample_indices(n: int, stratum: np.ndarray | None, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) row indices, each row drawn with replacement within its stratum."""
    rng = np.random.default_rng(seed)
    if stratum is None:
        return rng.integers(0, n, size=(resamples, n))
    stratum = np.asarray(stratum)
    if stratum.shape != (n,):
        raise ValueError(f"strata give {stratum.shape[0] if stratum.ndim else 0} rows, the data {n}")
    out = np.empty((resamples, n), dtype=np.int64)
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        out[:, members] = members[rng.integers(0, members.size, size=(resamples, members.size))]
    return out


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(metric, *columns, stratum=None, resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = 0) -> dict:
    """Percentile bootstrap interval of `metric(*columns)` over rows: `resamples` redraws of the
    rows (within `stratum`, see `strata`), the metric on each. Returns {"low", "high", "level",
    "resamples"}; the value itself is the metric on the rows as they are, computed by the caller.

    `metric` takes the resampled columns (numpy arrays) in the order given; for a mean of
    per-row scores (ROUGE, execution accuracy) pass `np.mean` and the scores.
    """
    columns = [np.asarray(c) for c in columns]
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"columns of different lengths: {[len(c) for c in columns]}")
    if n == 0:
        raise ValueError("no rows to bootstrap")
    samples = np.array([metric(*(c[idx] for c in columns))
                        for idx in _resample_indices(n, stratum, resamples, seed)], dtype=np.float64)
    low, high = _interval(samples, level)
    return {"low": low, "high": high, "level": level, "resamples": resamples}


def paired_difference(metric, labels, scores_a, scores_b, *, stratum=None, resamples: int = RESAMPLES,
                      level: float = LEVEL, seed: int = 0) -> dict:
    """`metric(labels, scores_a) - metric(labels, scores_b)` for two models scored on the same
    rows, with a paired bootstrap interval: both are scored on the same redrawn rows each time,
    so what the rows share (hard essays, easy prompts) cancels and only the models' difference
    varies. `within_noise` is True when the interval spans 0: the data cannot tell them apart."""
    labels, a, b = np.asarray(labels), np.asarray(scores_a), np.asarray(scores_b)
    if not (len(labels) == len(a) == len(b)):
        raise ValueError(f"paired scores need the same rows: {len(labels)}, {len(a)}, {len(b)}")
    difference = float(metric(labels, a) - metric(labels, b))
    samples = np.array([metric(labels[idx], a[idx]) - metric(labels[idx], b[idx])
                        for idx in _resample_indices(len(labels), stratum, resamples, seed)], dtype=np.float64)
    low, high = _interval(samples, level)
    return {"difference": difference, "low": low, "high": high, "level": level, "resamples": resamples,
            "within_noise": bool(low <= 0 <= high)}


def paired_mean_difference(scores_a, scores_b, **bootstrap) -> dict:
    """`paired_difference` of two per-row scores' means on the same rows (ROUGE per dialogue,
    1/0 execution correctness per question): no labels, no strata."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    return paired_difference(lambda _, scores: float(np.mean(scores)), np.zeros(len(a)), a, b, **bootstrap)


def format_interval(value, interval: dict | None, digits: int = 3) -> str:
    """`0.912 [0.880, 0.941]`: a value with its interval, as notebooks print them and the summary
    table shows them (the level is printed once, where the table or paragraph starts)."""
    if value is None:
        return "-"
    if not interval:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"


def describe_difference(name_a: str, name_b: str, result: dict, metric: str, digits: int = 3) -> str:
    """A conclusion written from a paired difference (a - b): which is better, its lead with the
    interval, signed from the better one's side; or "within noise" where the interval spans 0."""
    d, lo, hi = result["difference"], result["low"], result["high"]
    if result["within_noise"]:
        return (f"{name_a} vs {name_b}: {metric} difference {d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}], "
                "within noise (the interval spans 0)")
    if d < 0:  # b is better: its lead over a is -(a - b), and the interval turns around
        name_a, name_b, d, lo, hi = name_b, name_a, -d, -hi, -lo
    return f"{name_a} beats {name_b}: {metric} higher by {d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _roc_auc(labels, scores) -> float:
    """ROC AUC as the Mann-Whitney statistic on average ranks: equal to scikit-learn's
    `roc_auc_score` (ties count half; a test checks it), and fast enough to call a thousand
    times per interval."""
    from scipy.stats import rankdata

    labels = np.asarray(labels)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _accuracy_at(threshold: float):
    def accuracy(labels, scores):
        return float(np.mean((np.asarray(scores) >= threshold).astype(int) == labels))
    return accuracy


def classification_intervals(labels, probabilities, threshold: float = 0.5, groups=None, **bootstrap) -> dict:
    """Bootstrap intervals of ROC AUC and accuracy at `threshold` (stratified by label, and by
    group where `groups` are given): {"roc_auc": {...}, "accuracy": {...}}."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    stratum = strata(labels, groups)
    return {"roc_auc": bootstrap_interval(_roc_auc, labels, probabilities, stratum=stratum, **bootstrap),
            "accuracy": bootstrap_interval(_accuracy_at(threshold), labels, probabilities, stratum=stratum,
                                           **bootstrap)}


def paired_roc_auc(labels, scores_a, scores_b, groups=None, **bootstrap) -> dict:
    """Paired bootstrap of ROC AUC(a) - ROC AUC(b) on the same test rows (`paired_difference`)."""
    labels = np.asarray(labels)
    return paired_difference(_roc_auc, labels, scores_a, scores_b, stratum=strata(labels, groups), **bootstrap)
