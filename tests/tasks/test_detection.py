"""The detection notebook's own helpers: per-prompt test metrics, the split of each result,
the summary of split-seed repeats."""

import numpy as np
import pytest

from nbutils.tasks import detection


def test_metrics_per_prompt_show_a_prompt_the_overall_score_hides():
    """The model ranks one prompt perfectly and the other backwards; overall it still looks fine.
    The per-prompt table says so, with the baseline's ROC AUC on each prompt beside it."""
    labels = np.array([0, 0, 1, 1] * 10 + [0, 1] * 4)
    prompts = ["easy"] * 40 + ["hard"] * 8
    model = np.where(labels == 1, 0.9, 0.1).astype(float)
    model[40:] = np.where(labels[40:] == 1, 0.4, 0.6)  # backwards on "hard"
    baseline = np.full(len(labels), 0.5)
    table = detection.by_prompt(labels, model, baseline, prompts, threshold=0.5, baseline_threshold=0.5)
    assert list(table) == ["easy", "hard"]
    assert table["easy"]["rows"] == 40 and table["hard"]["rows"] == 8 and table["hard"]["generated"] == 4
    assert table["easy"]["roc_auc"] == 1.0 and table["hard"]["roc_auc"] == 0.0
    assert table["hard"]["accuracy"] == 0.0
    assert table["easy"]["tfidf_logreg_roc_auc"] == table["hard"]["tfidf_logreg_roc_auc"] == 0.5


def test_a_one_class_prompt_has_no_roc_auc():
    table = detection.by_prompt([1, 1, 0, 1], [0.9, 0.2, 0.1, 0.8], [0.5] * 4, ["a", "a", "b", "b"], 0.5, 0.5)
    assert table["a"]["roc_auc"] is None and table["a"]["accuracy"] == 0.5
    assert table["b"]["roc_auc"] == 1.0


def test_the_test_split_is_named_for_what_it_measures():
    assert detection.test_split_name(False) == "test"
    assert detection.test_split_name(True) == "test (prompts unseen in training)"
    # beside a held-out domain (roberta_search), the test's prompts are unseen too: not "in distribution"
    assert detection.test_split_name(True, domain_held_out=True) == "test (unseen prompts, same sources)"
    assert detection.test_split_name(False, domain_held_out=True) == "test"


def test_split_repeats_report_mean_and_sd_and_keep_each():
    repeats = [{"split_seed": 42, "roc_auc": 0.9, "tfidf_logreg_roc_auc": 0.8},
               {"split_seed": 43, "roc_auc": 0.7, "tfidf_logreg_roc_auc": 0.85}]
    summary = detection.split_repeat_summary(repeats)
    assert summary["runs"] == 2 and summary["split_seeds"] == [42, 43] and summary["repeats"] == repeats
    assert summary["roc_auc"]["mean"] == pytest.approx(0.8)
    assert summary["roc_auc"]["sd"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert summary["tfidf_logreg_roc_auc"]["mean"] == pytest.approx(0.825)
    assert detection.split_repeat_summary(repeats[:1])["roc_auc"]["sd"] == 0.0
    with pytest.raises(ValueError, match="no split-seed repeats"):
        detection.split_repeat_summary([])
