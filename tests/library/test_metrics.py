import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from nbutils import baselines, metrics


def test_roc_auc_comes_from_probabilities_not_hard_predictions():
    """Regression test for the original DAIGT bug: AUC from 0/1 predictions.

    Every probability is below the threshold, so the hard predictions are all 0 (AUC 0.5),
    but the ranking is perfect: the AUC must be 1.0.
    """
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.05, 0.10, 0.20, 0.30, 0.35, 0.40])
    result = metrics.binary_classification_metrics(labels, probs, threshold=0.5)
    assert result["roc_auc"] == 1.0
    assert result["accuracy"] == 0.5 and result["recall"] == 0.0


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    result = metrics.binary_classification_metrics(labels, probs, threshold=0.6)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert result["f1"] == pytest.approx(f1_score(labels, probs >= 0.6))
    assert set(result) == {"accuracy", "precision", "recall", "f1", "roc_auc"}


def test_positive_probabilities_is_a_stable_softmax():
    logits = np.array([[0.0, 0.0], [1000.0, 0.0], [-3.0, 2.0]])
    probs = metrics.positive_probabilities(logits)
    expected = torch.softmax(torch.tensor(logits), dim=1)[:, 1].numpy()
    assert np.isfinite(probs).all()
    assert probs == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        metrics.positive_probabilities(np.zeros((3, 1)))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.binary_classification_metrics([0, 1], [0.1, 0.2, 0.3])


def test_tfidf_baseline_learns_a_separable_task():
    train = ["formal moreover essay"] * 20 + ["lol kinda stuff"] * 20
    labels = [1] * 20 + [0] * 20
    probs = baselines.tfidf_logreg_probabilities(train, labels, ["moreover formal", "kinda lol"])
    assert probs[0] > 0.5 > probs[1]
