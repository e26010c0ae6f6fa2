"""Metrics per group of a column (per prompt, per source): a model that only works on some
groups is invisible in the overall score and plain in this table.

A group with a single class (each generator's essays are all generated) has no ROC AUC and no
meaningful precision; its accuracy is then the share it gets right (recall on AI text, or
specificity on human text). Undefined values are None, so the run record stays valid JSON.
"""

from __future__ import annotations

import math

import numpy as np

from nbutils.metrics import binary_classification_metrics


def metrics_by_group(labels, probabilities, groups, threshold: float = 0.5) -> dict[str, dict]:
    """{group: {"rows", "generated", accuracy, precision, recall, f1, roc_auc}}, groups sorted."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    groups = np.asarray([str(g) for g in groups])
    if not len(labels) == len(probabilities) == len(groups):
        raise ValueError(f"labels ({len(labels)}), probabilities ({len(probabilities)}) and groups "
                         f"({len(groups)}) differ in length")
    table = {}
    for group in sorted(set(groups.tolist())):
        rows = groups == group
        scores = binary_classification_metrics(labels[rows], probabilities[rows], threshold)
        if len(np.unique(labels[rows])) < 2:  # one class: precision/recall/F1/AUC say nothing
            scores.update(precision=None, recall=None, f1=None, roc_auc=None)
        scores = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scores.items()}
        table[group] = {"rows": int(rows.sum()), "generated": int(labels[rows].sum()), **scores}
    return table
