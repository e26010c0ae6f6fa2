"""Resume points, the non-finite-loss guard, secrets and data fingerprints."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainerCallback, TrainingArguments)

from nbutils.run import checkpoints, secrets
from nbutils import data
from tests import fixtures
from nbutils.run.callbacks import NonFiniteLossError, StopOnNonFiniteLoss


def _checkpoint(folder, step, complete=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_resume_picks_the_last_complete_checkpoint(tmp_path, capsys):
    _checkpoint(tmp_path, 9)
    last = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 12, complete=False)  # cut off mid-save
    (tmp_path / "checkpoint-notes").mkdir()
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10"]
    assert checkpoints.resume_checkpoint(tmp_path) == str(last)
    assert "resuming from" in capsys.readouterr().out
    assert checkpoints.resume_checkpoint(tmp_path, resume=False) is None
    assert "starting afresh" in capsys.readouterr().out
    assert checkpoints.resume_checkpoint(tmp_path / "missing") is None


def test_a_checkpoint_of_several_processes_is_complete_once_each_saved_its_rng_state(tmp_path, monkeypatch):
    """The main process writes trainer_state.json without waiting for the others' RNG files."""
    older, newer = _checkpoint(tmp_path, 10), _checkpoint(tmp_path, 20)
    for rank in (0, 1):
        (older / f"rng_state_{rank}.pth").write_bytes(b"")
    (newer / "rng_state_0.pth").write_bytes(b"")  # process 1 was killed before it saved its own
    assert checkpoints.complete_checkpoints(tmp_path, processes=2) == [older]
    assert checkpoints.complete_checkpoints(tmp_path, processes=1) == [older, newer]
    monkeypatch.setenv("WORLD_SIZE", "2")  # in a launched process: this run's processes by default
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert checkpoints.resume_checkpoint(tmp_path) == str(older)
    (newer / "rng_state_1.pth").write_bytes(b"")
    assert checkpoints.resume_checkpoint(tmp_path) == str(newer)


class _PoisonAtStep(TrainerCallback):
    """Make the weights NaN after `step`, as a diverging run would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))


def _trainer(cache, tmp_path, callbacks, **overrides):
    path = fixtures.tiny_model_dir(cache, "bert")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    ds = Dataset.from_dict({"text": ["so yeah", "Moreover, it is vital."] * 8, "labels": [0, 1] * 8})
    ds = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=8,
                    logging_steps=1, report_to="none", save_strategy="no",
                    logging_nan_inf_filter=False, dataloader_pin_memory=False, learning_rate=1e-3)
    args = TrainingArguments(**{**settings, **overrides})
    return Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
                   callbacks=callbacks)


def test_non_finite_loss_stops_training_with_step_and_learning_rate(cache, tmp_path):
    trainer = _trainer(cache, tmp_path, [_PoisonAtStep(3), StopOnNonFiniteLoss()])
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 4 .*learning rate [0-9.e-]+"):
        trainer.train()
    assert trainer.state.global_step == 4, "training must stop at the first non-finite loss"


def test_guard_refuses_to_run_with_the_trainer_hiding_non_finite_losses(cache, tmp_path):
    trainer = _trainer(cache, tmp_path, [StopOnNonFiniteLoss()], logging_nan_inf_filter=True)
    with pytest.raises(ValueError, match="logging_nan_inf_filter=False"):
        trainer.train()


def test_guard_lets_a_healthy_run_finish(cache, tmp_path):
    trainer = _trainer(cache, tmp_path, [StopOnNonFiniteLoss()])
    output = trainer.train()
    assert trainer.state.global_step == 8 and math.isfinite(output.training_loss)


def test_secrets_come_from_the_environment_and_are_never_described(monkeypatch):
    monkeypatch.setenv("NBUTILS_TEST_TOKEN", "hf_fake_secret_value")
    assert secrets.get_secret("NBUTILS_TEST_TOKEN") == "hf_fake_secret_value"
    assert "hf_fake" not in secrets.describe(secrets.get_secret("NBUTILS_TEST_TOKEN"))
    monkeypatch.delenv("NBUTILS_TEST_TOKEN")
    assert secrets.get_secret("NBUTILS_TEST_TOKEN") is None


def test_data_fingerprint_follows_the_file_contents(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,0\n")
    first = data.fingerprint(str(path))
    assert first.startswith("sha256:") and data.fingerprint(str(path)) == first
    path.write_text("text,label\na,1\n")
    assert data.fingerprint(str(path)) != first


def test_hub_data_fingerprint_is_its_rows_in_every_split(tmp_path):
    """A hub data set has no file of its own to hash: its fingerprint is its rows. The same rows
    give the same fingerprint whether built in memory or read back from Arrow files; another
    row, another order or another split name give another."""
    from datasets import DatasetDict, load_from_disk

    def splits(test="B: yo"):
        return DatasetDict(train=Dataset.from_dict({"dialogue": ["A: hi", "C: hey"]}),
                           test=Dataset.from_dict({"dialogue": [test]}))

    found = data.fingerprint("knkarthick/samsum", splits())
    assert found.startswith("sha256:") and data.fingerprint("knkarthick/samsum", splits()) == found
    splits().save_to_disk(tmp_path / "samsum")
    assert data.fingerprint("knkarthick/samsum", load_from_disk(tmp_path / "samsum")) == found
    assert data.fingerprint("knkarthick/samsum", splits(test="B: hey")) != found
    reordered = DatasetDict(train=splits()["train"].select([1, 0]), test=splits()["test"])
    assert data.fingerprint("knkarthick/samsum", reordered) != found
    renamed = DatasetDict(train=splits()["train"], validation=splits()["test"])
    assert data.fingerprint("knkarthick/samsum", renamed) != found
    assert data.fingerprint("knkarthick/samsum", splits()["train"]) == f"sha256:{data.rows_digest(splits()['train'])}"


def test_checkpoint_schedule_follows_save_every_steps():
    assert checkpoints.schedule(0) == {"save_strategy": "epoch", "eval_strategy": "epoch"}
    assert checkpoints.schedule(25) == {"save_strategy": "steps", "save_steps": 25,
                                        "eval_strategy": "steps", "eval_steps": 25}
    assert checkpoints.schedule(25, evaluate=False) == {"save_strategy": "steps", "save_steps": 25}
    with pytest.raises(ValueError, match="save_every_steps"):
        checkpoints.schedule(-1)


def test_device_map_gives_each_ddp_process_its_own_gpu(monkeypatch):
    from nbutils.run import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.device_map() is None  # CPU: the Trainer places the model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert runtime.device_map() == "auto"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.device_map() == {"": 1}
