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
    model = baselines.tuned_tfidf_logreg(train, labels, ["moreover formal", "kinda lol"], [1, 0])
    probs = model.probabilities(["moreover formal", "kinda lol"])
    assert probs[0] > 0.5 > probs[1]
    assert model.validation_probabilities == pytest.approx(probs)


def _typo_task(n=60, seed=0):
    """Generated essays spell every word right, human ones misspell one word in each: the same
    words, so only character n-grams separate them (word n-grams see unrelated new tokens)."""
    rng = np.random.default_rng(seed)
    words = ["the", "students", "should", "their", "because", "believe", "important", "school",
             "which", "different", "people", "would", "example", "however", "technology"]
    def essay(typo):
        chosen = list(rng.choice(words, 12))
        if typo:
            i = rng.integers(len(chosen))
            w = chosen[i]
            j = rng.integers(1, len(w))
            chosen[i] = w[:j] + "q" + w[j:] + "z" * int(rng.integers(1, 4))  # a one-off misspelling
        return " ".join(chosen)
    labels = rng.integers(0, 2, n)
    return [essay(typo=not y) for y in labels], labels


def test_tfidf_baseline_chooses_its_features_and_c_on_validation_only():
    """Both n-gram kinds and every C are tried and scored on validation; the best is kept and
    names itself. Here misspellings carry the signal, which word n-grams of unseen misspelled
    words cannot learn: the character n-grams win."""
    train, train_y = _typo_task(120, seed=1)
    val, val_y = _typo_task(60, seed=2)
    model = baselines.tuned_tfidf_logreg(train, train_y, val, val_y, seed=0)
    assert {(g["features"], g["C"]) for g in model.grid} == {
        (f, c) for f in baselines.TFIDF_FEATURES for c in baselines.TFIDF_C}
    best = max(model.grid, key=lambda g: g["validation_roc_auc"])
    assert model.settings["validation_roc_auc"] == best["validation_roc_auc"]
    assert model.settings["features"] == "char_wb 3-5" and model.settings["analyzer"] == "char_wb"
    assert model.settings["ngram_range"] == [3, 5] and model.settings["C"] in baselines.TFIDF_C
    assert roc_auc_score(val_y, model.validation_probabilities) == pytest.approx(best["validation_roc_auc"])
    assert "char_wb 3-5" in model.describe()


def test_tfidf_baseline_never_fits_on_the_rows_it_scores():
    """The vectoriser's vocabulary and the model come from the training rows only: scoring
    other texts (test) changes neither, and the choice does not depend on them."""
    train, train_y = _typo_task(80, seed=3)
    val, val_y = _typo_task(40, seed=4)
    model = baselines.tuned_tfidf_logreg(train, train_y, val, val_y)
    vocabulary = dict(model._vectorizer.vocabulary_)
    before = model.probabilities(val)
    model.probabilities(["an entirely unseen test essay with brand new words"] * 5)
    assert model._vectorizer.vocabulary_ == vocabulary
    assert model.probabilities(val) == pytest.approx(before)
    with pytest.raises(ValueError, match="one class"):
        baselines.tuned_tfidf_logreg(train, train_y, val, [1] * len(val))


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
