"""The run record's schema: fields every record has, and the token counts of a trained model."""

import pytest

from nbutils import record

BASE = dict(project="p", profile="smoke", task="t", model="m",
            data={"source": "s", "train": 1, "validation": 1, "test": 1},
            metrics={"score": 1.0}, primary_metric="score",
            parameters={"trainable": 1, "total": 1}, seed=0, config={})
TIMING = {"runtime_s": 1.0, "samples_per_s": 1.0, "processes": 1}


def test_a_trained_model_must_count_its_tokens():
    with pytest.raises(KeyError, match=r"lacks \['real_tokens', 'token_slots', 'padding_efficiency', "
                                       r"'tokens_per_s'\].*train_token_summary"):
        record.make_record(**BASE, train={**TIMING, "epochs": 2.0})
    tokens = {"real_tokens": 90, "token_slots": 100, "padding_efficiency": 0.9, "tokens_per_s": 90.0}
    rec = record.make_record(**BASE, train={**TIMING, "epochs": 2.0, **tokens})
    assert tuple(rec) == record.RECORD_FIELDS and rec["train"]["padding_efficiency"] == 0.9


def test_a_run_without_gradient_training_needs_no_token_counts():
    """The ensemble fits a logistic regression: no epochs, no tokens."""
    rec = record.make_record(**BASE, train={**TIMING, "epochs": None})
    assert rec["train"]["epochs"] is None


def test_a_missing_primary_metric_is_named():
    with pytest.raises(KeyError, match="primary_metric 'auc'"):
        record.make_record(**{**BASE, "primary_metric": "auc"}, train={**TIMING, "epochs": None})


def test_a_data_report_has_the_row_counts_and_reasons():
    from nbutils import row_report

    ledger = row_report.RowLedger()
    ledger.add_read("train", 3)
    ledger.drop("train", 1, "empty text")
    data = {**BASE["data"], "report": row_report.data_report(ledger, 0.5)}
    rec = record.make_record(**{**BASE, "data": data}, train={**TIMING, "epochs": None})
    assert rec["data"]["report"]["rows"] == {"read": 3, "kept": 2, "repaired": 0, "dropped": 1}
    broken = {**data, "report": {"rows": {"read": 3}}}
    with pytest.raises(KeyError, match=r"data.report' lacks \['by_split', 'dropped'.*'rows.kept'"):
        record.make_record(**{**BASE, "data": broken}, train={**TIMING, "epochs": None})
