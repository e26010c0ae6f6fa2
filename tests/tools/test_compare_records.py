"""The record comparison that checks a change left every smoke record as it was."""

import json

from tools import compare_records


def _write(folder, project, record):
    path = folder / project / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))


def test_timings_differ_freely_and_any_number_does_not(tmp_path):
    base = {"metrics": {"roc_auc": 0.9, "curve": [0.1, 0.2]}, "train": {"runtime_s": 10.0, "epochs": 4.0},
            "created": "2026-01-01", "git": {"commit": "a"}}
    _write(tmp_path / "a", "p/x", base)
    _write(tmp_path / "b", "p/x", {**base, "train": {"runtime_s": 99.0, "epochs": 4.0}, "created": "later",
                                   "git": {"commit": "b"}})
    assert compare_records.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    _write(tmp_path / "c", "p/x", {**base, "metrics": {"roc_auc": 0.9, "curve": [0.1, 0.25]}})
    assert compare_records.compare(tmp_path / "a", tmp_path / "c") == {"p/x/metrics.json": ["/metrics/curve[1]: 0.2 against 0.25"]}
    assert compare_records.compare(tmp_path / "a", tmp_path / "c", tolerance=0.1) == {"p/x/metrics.json": []}
    assert compare_records.main([str(tmp_path / "a"), str(tmp_path / "nowhere")]) == 1


def test_a_key_changed_on_purpose_is_left_out_only_when_named(tmp_path):
    base = {"metrics": {"roc_auc": 0.9}, "train": {"memory_estimate": {"total": 1.0}, "epochs": 4.0}}
    _write(tmp_path / "a", "p/x", base)
    _write(tmp_path / "b", "p/x", {**base, "train": {"memory_estimate": {"total": 2.0}, "epochs": 4.0}})
    assert compare_records.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert compare_records.main([str(tmp_path / "a"), str(tmp_path / "b"), "--ignore", "memory_estimate"]) == 0
    _write(tmp_path / "c", "p/x", {**base, "train": {"memory_estimate": {"total": 2.0}, "epochs": 5.0}})
    assert compare_records.compare(tmp_path / "a", tmp_path / "c", ignore=["memory_estimate"]) == {
        "p/x/metrics.json": ["/train/epochs: 4.0 against 5.0"]}
