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


def _scores(n=300, seed=0, separation=0.6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.round(labels * separation + rng.random(n) * 0.7, 2), rng.integers(0, 3, n)


def test_the_rank_auc_the_bootstrap_uses_equals_scikit_learns_with_ties():
    labels, scores, _ = _scores()
    assert metrics._roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_stratified_resamples_keep_each_class_and_group_count():
    labels, _, groups = _scores(n=200)
    stratum = metrics.strata(labels, groups)
    for idx in metrics._resample_indices(len(labels), stratum, 20, seed=1):
        for g in range(3):
            for y in (0, 1):
                cell = (groups == g) & (labels == y)
                assert ((groups[idx] == g) & (labels[idx] == y)).sum() == cell.sum()


def test_the_interval_holds_the_value_and_narrows_with_more_rows():
    small = _scores(n=100)
    large = _scores(n=2000)
    widths = []
    for labels, scores, groups in (small, large):
        value = metrics._roc_auc(labels, scores)
        interval = metrics.classification_intervals(labels, scores, 0.5, groups=groups)["roc_auc"]
        assert interval["low"] <= value <= interval["high"] and interval["level"] == 0.95
        widths.append(interval["high"] - interval["low"])
    assert widths[1] < widths[0] / 2  # about 1/sqrt(20) as wide


def test_a_paired_difference_of_a_model_with_itself_is_zero_and_of_a_worse_one_is_not_noise():
    labels, scores, groups = _scores(n=600)
    same = metrics.paired_roc_auc(labels, scores, scores, groups=groups)
    assert same["difference"] == 0 and same["low"] == same["high"] == 0 and same["within_noise"]
    noisy = scores + np.random.default_rng(5).normal(0, 0.5, len(scores))
    worse = metrics.paired_roc_auc(labels, scores, noisy, groups=groups)
    assert worse["difference"] > 0 and worse["low"] > 0 and not worse["within_noise"]
    assert metrics.describe_difference("clean", "noisy", worse, "ROC AUC").startswith("clean beats noisy: ROC AUC higher by +")
    # the winner is named first and its lead is positive, whichever side it was passed on
    turned = {**worse, "difference": -worse["difference"], "low": -worse["high"], "high": -worse["low"]}
    assert metrics.describe_difference("noisy", "clean", turned, "ROC AUC") == \
        metrics.describe_difference("clean", "noisy", worse, "ROC AUC")
    assert "within noise" in metrics.describe_difference("a", "a", same, "ROC AUC")


def test_a_mean_of_row_scores_gets_its_interval_and_a_format():
    values = np.r_[np.ones(80), np.zeros(20)]
    interval = metrics.bootstrap_interval(np.mean, values)
    assert interval["low"] < 0.8 < interval["high"] and 0.65 < interval["low"] and interval["high"] < 0.9
    assert metrics.format_interval(0.8, interval) == f"0.800 [{interval['low']:.3f}, {interval['high']:.3f}]"
    with pytest.raises(ValueError, match="no rows"):
        metrics.bootstrap_interval(np.mean, np.array([]))
