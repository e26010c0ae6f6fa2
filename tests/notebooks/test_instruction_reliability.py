"""Instruction tuning end to end: the batching it decided and what training processed, and a
killed QLoRA run that resumes to the uninterrupted numbers (which is also the determinism check:
the resumed process re-reads, re-packs and trains on, and must land on the session run's
numbers). The hub token is checked in every session run's outputs (test_secrets.py).

The session smoke run (`smoke_run("instruction_tune")`) is the reference for every comparison.
"""

import json

import pytest

from conftest import interrupt_smoke_run, run_smoke_project
from nbutils.run import checkpoints, record

VARIANTS = ("llama2_7b", "qwen2_5_0_5b_instruct")
QLORA = "instruction_tune/llama2_7b"  # its smoke params save a checkpoint every 5 optimizer steps


@pytest.fixture(scope="module")
def reference(smoke_run):
    code, folder = smoke_run("instruction_tune")
    assert code == 0
    return folder


def _final_state(run_dir):
    """The trainer state of a run's last checkpoint (the best and the last are kept)."""
    return json.loads((checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1]
                       / checkpoints.STATE_FILE).read_text())


def _numbers(scores):
    """The numeric fields of a record's scores (the intervals and splits compared apart)."""
    return {k: v for k, v in scores.items() if not isinstance(v, dict)}


# --- the step chosen on validation, the test slice scored after training, with an interval -------

@pytest.mark.parametrize("variant", VARIANTS)
def test_the_validation_split_chooses_the_step_and_the_test_slice_is_scored_after_training(reference, variant):
    run_dir = reference / "instruction_tune" / variant
    rec = record.read_record(run_dir)
    data, chosen = rec["data"], rec["train"]["chosen_checkpoint"]
    assert data["validation"] > 0 and data["test"] > 0
    state = _final_state(run_dir)
    evaluations = [e for e in state["log_history"] if "eval_loss" in e]
    # Every evaluation during training is on the validation split: its size, not the test slice's.
    assert evaluations and chosen["evaluations"] == len(evaluations)
    best = min(evaluations, key=lambda e: e["eval_loss"])
    assert (chosen["step"], chosen["validation_loss"]) == (best["step"], pytest.approx(best["eval_loss"]))
    assert chosen["last_step"] == state["global_step"]
    # The headline carries its interval over test examples and names the split honestly.
    metrics = rec["metrics"]
    for name in ("eval_loss", "eval_perplexity"):
        interval = metrics["intervals"][name]
        assert interval["low"] <= metrics[name] <= interval["high"] and interval["resamples"] == 1000
        assert metrics["measured_on"][name] == "held-out slice of train"
    assert set(metrics["measured_on"]) == {"eval_loss", "eval_perplexity"}  # no count, no generation figure
    executed = (run_dir / "instruction_tune.ipynb").read_text()
    shown = record.format_value(metrics["eval_perplexity"])
    assert f"test perplexity {shown} [" in executed and "bootstrap interval" in executed
    assert f"kept the checkpoint of step {chosen['step']} of {chosen['last_step']}" in executed


# --- batching: packed, no padding, every real token trained on, the recipe's steps -------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_record_holds_the_batching_decision_and_the_tokens_processed(reference, variant):
    run_dir = reference / "instruction_tune" / variant
    rec = record.read_record(run_dir)
    batching, train, lengths = rec["data"]["batching"], rec["train"], rec["data"]["lengths"]
    # The tiny Llama runs sdpa attention, which keeps packed examples apart: it packs, one row
    # per forward (a dense mask over a packed row costs its length squared).
    assert batching["packing"] is True
    assert "keeps packed examples apart" in batching["reason"] and "sdpa" in batching["reason"]
    assert batching["rows"] < lengths["examples"], "packing puts several examples in a row"
    # Packed rows are fewer than examples, yet an optimizer step still holds about the recipe's
    # batch of examples: the run takes the recipe's number of steps.
    assert batching["steps_per_epoch"] == batching["recipe_steps_per_epoch"]
    state = _final_state(run_dir)
    assert state["global_step"] == state["max_steps"] == batching["steps_per_epoch"] * train["epochs"]
    # No padding in packed rows, and every real token (each example up to max_length) is
    # trained on once per epoch: the length report's tokens minus those max_length cuts.
    assert train["padding_efficiency"] >= 0.9
    assert train["real_tokens"] <= train["token_slots"]
    per_epoch = lengths["mean"] * lengths["examples"] - lengths["tokens_cut"]
    assert train["real_tokens"] == pytest.approx(per_epoch * train["epochs"], abs=1)
    assert train["tokens_per_s"] > 0 and train["samples_per_s"] > 0
    assert rec["data"]["fingerprint"].startswith("sha256:")


# --- a killed QLoRA run resumes and finishes with the uninterrupted numbers ----------------------

def test_killed_qlora_run_resumes_to_the_uninterrupted_metrics(reference, tmp_path):
    # SIGKILL the runner and its kernel once the first checkpoint (step 5 of 12 in the first
    # epoch) is complete, as when a Kaggle or Colab session disappears.
    work = interrupt_smoke_run(QLORA, tmp_path)  # where the killed run left its checkpoints
    run_dir = tmp_path / "smoke" / QLORA  # where a finished run is published
    assert not (work / record.RECORD_FILE).exists() and not run_dir.exists(), "killed too late: the run had finished"
    interrupted_at = checkpoints.complete_checkpoints(work / "checkpoints")[-1]
    state = json.loads((interrupted_at / checkpoints.STATE_FILE).read_text())
    assert state["global_step"] < state["max_steps"]
    # The checkpoint holds the adapter, not the 4-bit base, plus the optimizer and scheduler.
    saved = {p.name for p in interrupted_at.iterdir()}
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt"} <= saved
    assert "model.safetensors" not in saved

    resumed = run_smoke_project(QLORA, tmp_path)  # the same command, the same output folder
    assert resumed.status == "ok", resumed.error
    executed = (run_dir / "instruction_tune.ipynb").read_text()
    assert "resuming from" in executed and f"checkpoints/{interrupted_at.name}" in executed
    # Adapter, optimizer (AdamW's moments), scheduler and RNG states were all restored: every
    # training loss logged after the resume, and the final numbers, are the uninterrupted run's.
    expected = record.read_record(reference / QLORA)
    assert _numbers(resumed.record["metrics"]) == pytest.approx(_numbers(expected["metrics"]), abs=1e-6)
    for name, interval in expected["metrics"]["intervals"].items():
        assert _numbers(resumed.record["metrics"]["intervals"][name]) == pytest.approx(interval, abs=1e-6)
    assert _numbers(resumed.record["baselines"]["before_training"]) == pytest.approx(
        _numbers(expected["baselines"]["before_training"]), abs=1e-6)
    # The resumed run chose the same checkpoint on validation.
    assert resumed.record["train"]["chosen_checkpoint"] == pytest.approx(expected["train"]["chosen_checkpoint"])
    assert resumed.record["data"]["fingerprint"] == expected["data"]["fingerprint"]
    assert resumed.record["data"]["batching"] == expected["data"]["batching"]

    def losses(rd):
        return {e["step"]: e["loss"] for e in _final_state(rd)["log_history"] if "loss" in e}

    reference_losses = losses(reference / QLORA)
    assert len(reference_losses) >= 5
    assert losses(run_dir) == pytest.approx(reference_losses, abs=1e-6)
