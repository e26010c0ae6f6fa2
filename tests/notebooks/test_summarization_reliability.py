"""Dialogue summarization, issues 8 and 10: determinism, resuming a killed LoRA run (adapter,
optimizer and scheduler state), the data fingerprint, the non-finite-loss guard, and padding
efficiency of the length-grouped training batches."""

import json
import re
import shutil

import pytest
import torch
from transformers import TrainerCallback

from conftest import flat, interrupt_smoke_run, run_smoke_project
from nbutils import batching, data, lora
from nbutils.run import checkpoints, record
from tests import fixtures
from nbutils.tasks import summarization

NOTEBOOK = "summarize_dialogues"
TRAINS = f"{NOTEBOOK}/flan_t5_large"  # 480 dialogues, 3 epochs: the variant that really trains
QUICK = f"{NOTEBOOK}/flan_t5_base"  # 96 dialogues, 1 epoch: the cheap one


@pytest.fixture(scope="module")
def session_runs(smoke_run):
    code, folder = smoke_run(NOTEBOOK)
    assert code == 0
    return folder


def _run(name, outputs, **overrides):
    result = run_smoke_project(name, outputs, **overrides)
    assert result.status == "ok", result.error
    return result


def test_same_parameters_and_seed_give_identical_metrics(session_runs, tmp_path, cache):
    """A fresh run and the session's smoke run: the same numbers, to the last digit (LoRA
    initialisation, length-grouped shuffling, dropout and greedy generation all follow the seed)."""
    first = record.read_record(session_runs / QUICK)
    second = _run(QUICK, tmp_path).record
    assert second["metrics"] == first["metrics"]
    assert second["baselines"] == first["baselines"]
    for key in ("real_tokens", "token_slots", "padding_efficiency"):
        assert second["train"][key] == first["train"][key]
    # The record names the data it read: a hash of the sample folder's split files.
    assert second["data"]["fingerprint"] == first["data"]["fingerprint"]
    assert first["data"]["fingerprint"] == data.fingerprint(str(fixtures.sample_data_dir(cache) / "samsum"))
    assert first["data"]["fingerprint"].startswith("sha256:")


def _last_checkpoint(run_dir):
    """The run's last checkpoint; the notebook keeps it beside the best one, so that a rerun of a
    finished run resumes at the end of training instead of training again from the best."""
    last = checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1]
    state = json.loads((last / checkpoints.STATE_FILE).read_text())
    assert state["global_step"] == state["max_steps"], f"{last} is not the end of training"
    return last


def _logged(run_dir, key):
    """`key` per step from the log history of the run's last checkpoint (restored, then continued)."""
    history = json.loads((_last_checkpoint(run_dir) / checkpoints.STATE_FILE).read_text())["log_history"]
    return {entry["step"]: entry[key] for entry in history if key in entry}


def test_killed_lora_run_resumes_and_finishes_with_the_uninterrupted_metrics(session_runs, tmp_path):
    """SIGKILL the run at its first checkpoint (end of epoch 1 of 3), rerun it into the same
    folder: it resumes there and ends with the session run's adapter and metrics. The reference
    is the session run itself (same parameters), so this costs one killed and one resumed run."""
    from safetensors.torch import load_file

    reference_dir = session_runs / TRAINS
    # SIGKILL the runner and its kernel at the first checkpoint, as when a Kaggle or Colab
    # session disappears.
    work = interrupt_smoke_run(TRAINS, tmp_path)  # where the killed run left its checkpoints
    run_dir = tmp_path / "smoke" / TRAINS  # where a finished run is published
    assert not (work / record.RECORD_FILE).exists() and not run_dir.exists(), "killed too late: the run had finished"
    interrupted_at = checkpoints.complete_checkpoints(work / "checkpoints")[-1]
    state = json.loads((interrupted_at / checkpoints.STATE_FILE).read_text())
    assert 0 < state["global_step"] < state["max_steps"]
    # A PEFT checkpoint holds the adapter only (not the base model), beside the optimizer and
    # scheduler states that the Trainer restores with it.
    saved = {p.name for p in interrupted_at.iterdir()}
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= saved
    assert "model.safetensors" not in saved

    resumed = _run(TRAINS, tmp_path)  # the same command, the same output folder
    executed = (run_dir / f"{NOTEBOOK}.ipynb").read_text()
    assert "resuming from" in executed and f"checkpoints/{interrupted_at.name}" in executed
    # After the interruption the resumed run logs the learning rates and losses of the
    # uninterrupted one: the scheduler and the optimizer state came back, not only the adapter.
    for key in ("learning_rate", "loss"):
        before, after = _logged(reference_dir, key), _logged(run_dir, key)
        later = [step for step in before if step > state["global_step"]]
        assert later and [after[s] for s in later] == pytest.approx([before[s] for s in later], abs=1e-6), key
    reference = record.read_record(reference_dir)
    assert flat(resumed.record["metrics"]) == pytest.approx(flat(reference["metrics"]), abs=1e-6)
    assert resumed.record["train"]["epochs"] == reference["train"]["epochs"]
    # The adapter (LoRA matrices and the lm_head trained in full) at the end of training, and the
    # best one that the notebook saved, are the reference's. (The best may be the checkpoint the
    # run was killed at, so the end of training is what shows the resumed steps.)
    for ours_dir, theirs_dir in ((_last_checkpoint(run_dir), _last_checkpoint(reference_dir)),
                                 (run_dir / "adapter", reference_dir / "adapter")):
        ours, theirs = (load_file(d / "adapter_model.safetensors") for d in (ours_dir, theirs_dir))
        assert ours.keys() == theirs.keys() and any("lm_head" in k for k in ours)
        assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) <= 1e-6


# --- resuming a LoRA model mid-epoch, in process ------------------------------------------------

class _Interrupt(TrainerCallback):
    """Raise right after the checkpoint of `step` is saved, as a lost session would stop."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"interrupted after step {self.step}")


@pytest.fixture(scope="module")
def dialogue_features(cache):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "t5"))
    rows = [json.loads(line) for line in
            (fixtures.sample_data_dir(cache) / "samsum" / "train.jsonl").read_text().splitlines()][:48]
    tokenize = summarization.tokenize_function(tokenizer, summarization.DEFAULT_TEMPLATE, "dialogue",
                                               "summary", 96, 32)
    return tokenizer, Dataset.from_list(rows).map(tokenize, batched=True, remove_columns=["id", "dialogue", "summary"])


def _lora_trainer(cache, features, folder, callbacks=()):
    from transformers import AutoModelForSeq2SeqLM, Trainer, TrainingArguments, set_seed

    tokenizer, dataset = features
    set_seed(0)
    model = AutoModelForSeq2SeqLM.from_pretrained(fixtures.tiny_model_dir(cache, "t5"), use_safetensors=True)
    config = lora.seq2seq_lora_config(4, 8, 0.1, "all-linear")  # dropout: the RNG state matters too
    config.modules_to_save = ["lm_head"]  # a layer trained in full, saved with the adapter
    model = lora.add_lora(model, config)
    # 48 dialogues in batches of 8: one epoch of 6 steps, a checkpoint after step 3 (mid-epoch).
    args = TrainingArguments(output_dir=str(folder), max_steps=6, per_device_train_batch_size=8,
                             save_strategy="steps", save_steps=3, logging_steps=1, learning_rate=1e-2,
                             warmup_steps=0.2, lr_scheduler_type="linear", seed=0, report_to="none",
                             dataloader_pin_memory=False, **batching.length_grouping())
    return Trainer(model=model, args=args, train_dataset=dataset, callbacks=list(callbacks),
                   data_collator=batching.seq2seq_collator(tokenizer, model))


def _trained(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def test_lora_resume_restores_adapter_optimizer_and_scheduler(cache, dialogue_features, tmp_path):
    """A PEFT checkpoint holds only the adapter; the Trainer's resume loads it into the PEFT
    model (`load_adapter`) and loads optimizer.pt and scheduler.pt beside it. Interrupted after
    step 3 of 6 and resumed, training ends with the uninterrupted run's weights; AdamW's step
    counts and the schedule continue from 3 (a fresh optimizer would restart them), and resuming
    without the saved optimizer state ends elsewhere: the test sees the difference."""
    reference = _lora_trainer(cache, dialogue_features, tmp_path / "reference")
    reference.train()
    expected = _trained(reference)

    interrupted = _lora_trainer(cache, dialogue_features, tmp_path / "run", [_Interrupt(3)])
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    checkpoint = checkpoints.resume_checkpoint(tmp_path / "run")
    assert checkpoint.endswith("checkpoint-3")
    resumed = _lora_trainer(cache, dialogue_features, tmp_path / "run")
    resumed.train(resume_from_checkpoint=checkpoint)
    weights = _trained(resumed)
    assert weights.keys() == expected.keys() and any("lm_head" in k for k in weights)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert {int(state["step"]) for state in resumed.optimizer.state.values()} == {6}
    assert resumed.lr_scheduler.last_epoch == 6
    losses = [entry["loss"] for entry in resumed.state.log_history if "loss" in entry]
    assert losses == [entry["loss"] for entry in reference.state.log_history if "loss" in entry]

    # Control: the same checkpoint without its optimizer state (the Trainer then starts a fresh
    # optimizer and schedule) does not reproduce the run.
    control = tmp_path / "control" / "checkpoint-3"
    shutil.copytree(checkpoint, control)
    (control / "optimizer.pt").unlink()
    fresh = _lora_trainer(cache, dialogue_features, tmp_path / "control")
    fresh.train(resume_from_checkpoint=str(control))
    assert {int(state["step"]) for state in fresh.optimizer.state.values()} == {3}
    assert max((_trained(fresh)[k] - expected[k]).abs().max().item() for k in expected) > 1e-3


# --- numerical faults ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_diverging_run_stops_with_step_learning_rate_and_the_t5_hint(cache, tmp_path):
    """An absurd learning rate makes the loss infinite or NaN within a few steps; the run stops
    there with a message naming the step, the learning rate and what to try for T5."""
    result = run_smoke_project(QUICK, tmp_path, learning_rate=1.0e30, warmup_ratio=0.0, batch_size=8,
                               max_train_samples=48, max_eval_samples=4, logging_steps=1)
    assert result.status == "failed"
    assert re.search(r"NonFiniteLossError: training loss became (nan|inf|-inf) at step \d+ "
                     r"\(epoch [\d.]+, learning rate [\d.]+e\+(29|30)\)", result.error), result.error
    assert "T5 models overflow in fp16" in result.error
    assert not (tmp_path / "smoke" / QUICK / record.RECORD_FILE).exists()


# --- padding efficiency (issue 8) ---------------------------------------------------------------

def test_training_spends_most_token_slots_on_real_tokens(session_runs):
    """Dynamic padding with length-grouped batches. The record counts inputs and summaries (T5's
    decoder runs over every label slot). On the sample's 480 training dialogues (inputs up to
    336 tokens, summaries up to 32) random batches of 16 keep about 0.56 of the slots real
    (inputs 0.56, summaries 0.61); length grouping gets about 0.87 (inputs 0.90, summaries 0.68):
    transformers sorts by input length only, within mega-batches of
    min(50, rows // (4 x batch)) batches, here 7 batches of 16. On SAMSum's 14,732 dialogues the
    mega-batches hold 50 batches."""
    train = record.read_record(session_runs / TRAINS)["train"]
    assert 0 < train["real_tokens"] <= train["token_slots"]
    assert train["padding_efficiency"] == pytest.approx(train["real_tokens"] / train["token_slots"], abs=1e-3)
    assert train["padding_efficiency"] >= 0.8, train
    assert train["input_padding_efficiency"] >= 0.85, train
    assert 0 < train["target_padding_efficiency"] <= 1 and train["tokens_per_s"] > 0
    # Three epochs of the same batches: the token counts are whole multiples of one epoch's.
    assert train["epochs"] == 3.0 and train["real_tokens"] % 3 == 0 and train["token_slots"] % 3 == 0
