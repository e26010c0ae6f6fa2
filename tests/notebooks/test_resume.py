"""Reliability end to end: a killed run resumes and ends with the uninterrupted run's numbers.

That comparison is also the determinism check: the resumed process re-reads the data, re-splits
it and trains on from restored states, and must land on the session run's numbers (a separate
"same seed, same numbers" rerun cost a whole extra run; the hub token is checked in every
session run's outputs by tests/notebooks/test_secrets.py)."""

import json

import pytest

from conftest import flat, interrupt_smoke_run, run_smoke_project
from nbutils.run import checkpoints, record

PROJECT = "detect_ai_text/bert"


def _run(outputs, **overrides):
    result = run_smoke_project(PROJECT, outputs, **overrides)
    assert result.status == "ok", result.error
    return result


def test_killed_run_resumes_and_finishes_with_the_uninterrupted_metrics(smoke_run, tmp_path, monkeypatch):
    reference = record.read_record(smoke_run("detect_ai_text")[1] / PROJECT)
    # SIGKILL the runner and its kernel once the first checkpoint is complete, as when a Kaggle
    # or Colab session disappears.
    work = interrupt_smoke_run(PROJECT, tmp_path)  # where the killed run left its checkpoints
    run_dir = tmp_path / "smoke" / PROJECT  # where a finished run is published
    assert not (work / record.RECORD_FILE).exists() and not run_dir.exists(), "killed too late: the run had finished"
    interrupted_at = checkpoints.complete_checkpoints(work / "checkpoints")[-1]
    state = json.loads((interrupted_at / "trainer_state.json").read_text())
    assert state["global_step"] < state["max_steps"]

    resumed = _run(tmp_path)  # the same command, the same output folder
    executed = (run_dir / "detect_ai_text.ipynb").read_text()
    assert "resuming from" in executed and f"checkpoints/{interrupted_at.name}" in executed
    # Weights, optimizer, scheduler and RNG states were restored: the same final numbers.
    assert flat(resumed.record["metrics"]) == pytest.approx(flat(reference["metrics"]), abs=1e-6)
    assert resumed.record["baselines"] == reference["baselines"]  # TF-IDF: no training state
    assert resumed.record["data"]["fingerprint"] == reference["data"]["fingerprint"]
    assert reference["data"]["fingerprint"].startswith("sha256:")

    # Rerunning the finished run finds its last checkpoint (kept beside the best one) and has
    # nothing left to train: the same numbers, no further optimizer step.
    last = checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1]
    final_state = json.loads((last / "trainer_state.json").read_text())
    assert final_state["global_step"] == final_state["max_steps"], "the last checkpoint was not kept"
    again = _run(tmp_path)
    assert f"checkpoints/{last.name}" in (run_dir / "detect_ai_text.ipynb").read_text()
    assert flat(again.record["metrics"]) == pytest.approx(flat(reference["metrics"]), abs=1e-6)
    assert checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1] == last
    # ... and says so: the record keeps the figures of the run that trained, never zeros.
    assert again.record["train"]["resumed_finished"] is True
    for key in record.TRAINING_FIGURES:
        assert again.record["train"][key] == resumed.record["train"][key] and again.record["train"][key]

    # docs/reliability.md's own example: change training parameters and run again. It trains afresh
    # with them (never on the finished checkpoint and its old schedule), and the record, the
    # checkpoints' identity and the trainer state all describe that training.
    changed = _run(tmp_path, epochs=1, learning_rate=1.0e-3)
    identity = checkpoints.read_identity(run_dir)
    assert changed.record["config"]["learning_rate"] == identity["parameters"]["learning_rate"] == 1.0e-3
    assert changed.record["config"]["epochs"] == identity["parameters"]["epochs"] == 1
    assert "resumed_finished" not in changed.record["train"] and changed.record["train"]["epochs"] == 1.0
    state = json.loads((checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1] / "trainer_state.json").read_text())
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    assert state["max_steps"] == final_state["max_steps"] // 4  # one epoch of the four
    assert rates and max(rates) <= 1.0e-3 < reference["config"]["learning_rate"]
    assert "holds an earlier run; training afresh" in (run_dir / "detect_ai_text.ipynb").read_text()

    # A failing run after a good one: the good one stays whole; the failure is named, beside it.
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    failed = run_smoke_project(PROJECT, tmp_path, data_source="data/missing.csv")
    assert failed.status == "failed" and "data_source = 'data/missing.csv'" in failed.error
    assert {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    assert failed.notebook == work / "detect_ai_text.ipynb" and failed.notebook.is_file()
