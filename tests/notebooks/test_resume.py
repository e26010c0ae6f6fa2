"""Reliability end to end: determinism, resuming a killed run, and no secret in any output."""

import json

import pytest

from conftest import interrupt_smoke_run, run_smoke_project
from nbutils import checkpoints, record

PROJECT = "detect_ai_text/bert"


def _run(outputs, **overrides):
    result = run_smoke_project(PROJECT, outputs, **overrides)
    assert result.status == "ok", result.error
    return result


def test_same_parameters_and_seed_give_identical_metrics(smoke_run, tmp_path, monkeypatch):
    """The smoke run of the session and a fresh run: the same numbers, to the last digit. The
    fresh run has a hub token in its environment (as a user's would be): no file it leaves may
    hold it. (One run for both checks: each used to run the project afresh.)"""
    secret = "hf_FAKEtoken1234567890notreal"
    monkeypatch.setenv("HF_TOKEN", secret)
    first = record.read_record(smoke_run("detect_ai_text")[1] / PROJECT)
    second = _run(tmp_path).record
    leaks = [str(path) for path in tmp_path.rglob("*") if path.is_file()
             and secret.encode() in path.read_bytes()]
    assert not leaks, f"the token leaked into {leaks}"
    assert second["metrics"] == first["metrics"]
    assert second["baselines"] == first["baselines"]
    assert second["data"]["fingerprint"] == first["data"]["fingerprint"]
    assert second["data"]["fingerprint"].startswith("sha256:")


def test_killed_run_resumes_and_finishes_with_the_uninterrupted_metrics(smoke_run, tmp_path):
    reference = record.read_record(smoke_run("detect_ai_text")[1] / PROJECT)
    # SIGKILL the runner and its kernel once the first checkpoint is complete, as when a Kaggle
    # or Colab session disappears.
    run_dir = interrupt_smoke_run(PROJECT, tmp_path)
    assert not (run_dir / record.RECORD_FILE).exists(), "killed too late: the run had finished"
    interrupted_at = checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1]
    state = json.loads((interrupted_at / "trainer_state.json").read_text())
    assert state["global_step"] < state["max_steps"]

    resumed = _run(tmp_path)  # the same command, the same output folder
    executed = (run_dir / "detect_ai_text.ipynb").read_text()
    assert "resuming from" in executed and f"checkpoints/{interrupted_at.name}" in executed
    # Weights, optimizer, scheduler and RNG states were restored: the same final numbers.
    assert resumed.record["metrics"] == pytest.approx(reference["metrics"], abs=1e-6)

    # Rerunning the finished run finds its last checkpoint (kept beside the best one) and has
    # nothing left to train: the same numbers, no further optimizer step.
    last = checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1]
    final_state = json.loads((last / "trainer_state.json").read_text())
    assert final_state["global_step"] == final_state["max_steps"], "the last checkpoint was not kept"
    again = _run(tmp_path)
    assert f"checkpoints/{last.name}" in (run_dir / "detect_ai_text.ipynb").read_text()
    assert again.record["metrics"] == pytest.approx(reference["metrics"], abs=1e-6)
    assert checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1] == last
