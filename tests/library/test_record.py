"""The run record's schema: fields every record has, and the token counts of a trained model."""

import pytest

from nbutils.run import record

BASE = dict(project="p", profile="smoke", task="t", model="m",
            data={"source": "s", "train": 1, "validation": 1, "test": 1},
            metrics={"score": 1.0, "intervals": {"score": {"low": 0.9, "high": 1.0, "level": 0.95, "resamples": 10}},
                     "measured_on": {"score": "test"}}, primary_metric="score",
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


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("intervals"), "no interval for the primary metric 'score'"),
    (lambda m: m["intervals"]["score"].pop("level"), r"intervals.score: lacks \['level'\]"),
    (lambda m: m["intervals"].update(bleu=m["intervals"]["score"]), "intervals.bleu: is an interval of no metric"),
    (lambda m: m.pop("measured_on"), "does not say which split 'score' was measured on"),
    (lambda m: m["measured_on"].update(threshold="test"), r"names metrics the record lacks: \['threshold'\]"),
])
def test_the_headline_has_an_interval_and_every_result_its_split(change, message):
    import copy

    metrics = copy.deepcopy(BASE["metrics"])
    change(metrics)
    with pytest.raises(KeyError, match=message):
        record.make_record(**{**BASE, "metrics": metrics}, train={**TIMING, "epochs": None})


def test_split_hash_follows_the_rows_not_their_order():
    from datasets import Dataset

    split = Dataset.from_dict({"row_id": [3, 1, 2], "text": ["c", "a", "b"]})
    same = Dataset.from_dict({"row_id": [1, 2, 3], "text": ["a", "b", "c"]})
    other = Dataset.from_dict({"row_id": [1, 2, 4], "text": ["a", "b", "d"]})
    assert record.split_hash(split) == record.split_hash(same) != record.split_hash(other)
    assert record.split_hash(split).startswith("sha256:") and len(record.split_hash(split)) == 7 + 16
    # Without an id column, the rows' contents are hashed.
    assert record.split_hash(split, None) == record.split_hash(same.select_columns(["text", "row_id"]), None)
    assert record.split_hash(split.select_columns(["text"])) != record.split_hash(other.select_columns(["text"]))
    hashes = record.split_hashes({"train": split, "test": other})
    assert list(hashes) == ["train", "test"] and hashes["train"] != hashes["test"]


def test_the_summary_digest_tells_other_splits_apart():
    def rec(test_hash, fingerprint="sha256:data"):
        return {"data": {"fingerprint": fingerprint, "split_hashes": {"train": "sha256:a", "test": test_hash}}}

    assert record.splits_digest(rec("sha256:b")) == record.splits_digest(rec("sha256:b"))
    assert record.splits_digest(rec("sha256:b")) != record.splits_digest(rec("sha256:c"))
    assert record.splits_digest(rec("sha256:b")) != record.splits_digest(rec("sha256:b", "sha256:other"))
    assert len(record.splits_digest(rec("sha256:b"))) == 8
    assert record.splits_digest({"data": {"source": "x"}}) is None  # a record without splits


def test_split_hash_reads_a_dataframe_or_a_dict_of_columns_alike():
    import pandas as pd
    from datasets import Dataset

    ids = [5, 3, 9]
    expected = record.split_hash(Dataset.from_dict({"row_id": ids}))
    assert record.split_hash(pd.DataFrame({"row_id": ids, "label": [0, 1, 0]})) == expected
    assert record.split_hash({"row_id": ids}) == expected


def test_a_data_report_has_the_row_counts_and_reasons():
    from nbutils.run import row_report

    ledger = row_report.RowLedger()
    ledger.add_read("train", 3)
    ledger.drop("train", 1, "empty text")
    data = {**BASE["data"], "report": row_report.data_report(ledger, 0.5)}
    rec = record.make_record(**{**BASE, "data": data}, train={**TIMING, "epochs": None})
    assert rec["data"]["report"]["rows"] == {"read": 3, "kept": 2, "repaired": 0, "dropped": 1}
    broken = {**data, "report": {"rows": {"read": 3}}}
    with pytest.raises(KeyError, match=r"data.report' lacks \['by_split', 'dropped'.*'rows.kept'"):
        record.make_record(**{**BASE, "data": broken}, train={**TIMING, "epochs": None})


def test_the_commit_is_recorded_even_when_git_status_is_slow(monkeypatch, root):
    """In a fresh clone `git status` runs the notebooks' clean filter (nbstripout) on every
    notebook; on a busy machine that took longer than the old 10 s limit, and the record lost
    its commit (seen in CI). The commit comes from `rev-parse` alone."""
    import subprocess

    real_run = subprocess.run

    def slow_status(command, *args, **kwargs):
        if command[:2] == ["git", "status"]:
            raise subprocess.TimeoutExpired(command, kwargs.get("timeout"))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", slow_status)
    state = record.git_state(root)
    assert state["commit"] and len(state["commit"]) == 40 and state["dirty"] is None


def test_format_value_is_the_tables_and_the_conclusions_one():
    import numpy as np

    assert record.format_value(None) == "-"
    assert record.format_value(0.12345) == "0.123"
    assert record.format_value(np.float32(0.5), 2) == "0.50"
    assert record.format_value(128) == "128"
    assert record.format_value("bert") == "bert"


def test_json_is_written_whole_and_only_by_the_main_process(tmp_path, monkeypatch):
    from nbutils.run import runtime

    path = record.write_json(tmp_path / "runs" / "full@0.5.json", {"loss": 0.25}, indent=1)
    assert path.read_text() == '{\n "loss": 0.25\n}\n' and list(path.parent.iterdir()) == [path]
    monkeypatch.setenv("RANK", "1")
    assert not runtime.is_main_process()
    assert not record.write_json(tmp_path / "other.json", {}).exists()
