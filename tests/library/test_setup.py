"""nbutils.run.setup: a notebook's set-up in one call, and the TrainingArguments keywords shared by
every notebook (the notebooks used to write both out by hand; these pin what they did)."""

import json
import random

import numpy as np
import pytest
import torch
from transformers import Seq2SeqTrainingArguments, TrainingArguments

from nbutils import batching
from nbutils.run import checkpoints, environment, setup

FAKE_TOKEN = "hf_surfaceTestTokenNeverPrinted"


def legacy_training_arguments(run, *, save_every_steps: int = 0, evaluate: bool = True,
                       best_metric: str | None = None, report_to: str = "none",
                       length_grouping: bool = True, folder=setup.CHECKPOINTS, **recipe) -> dict:
    """The shared keywords the notebooks used before they wrote their recipe out
    (`Run.training_arguments`), kept here as the reference the tests compare with.

    TrainingArguments (or Seq2SeqTrainingArguments, SFTConfig) keywords: the shared
    infrastructure, then `recipe`, whose keywords win.

    - checkpoints into `run.dir / folder`, every epoch or every `save_every_steps` optimizer
      steps (`checkpoints.schedule`); with `evaluate`, evaluation follows the same schedule;
    - `best_metric`: the checkpoint with the best validation score of it is loaded at the end,
      and the best and the last are kept (a rerun of a finished run then resumes at its end and
      trains nothing); without one, only the last is kept;
    - `logging_nan_inf_filter=False`, so `callbacks.StopOnNonFiniteLoss` sees a NaN loss;
    - `length_grouping`: batches of examples of similar length (`batching.length_grouping`);
      False leaves the sampler to the recipe;
    - pinned memory where there is a GPU, `report_to`, the run's precision flags and seed.
    """
    settings = {"output_dir": str(run.dir / folder),
                **checkpoints.schedule(save_every_steps, evaluate=evaluate),
                "logging_nan_inf_filter": False,  # let StopOnNonFiniteLoss see a NaN loss
                "report_to": report_to,
                "dataloader_pin_memory": torch.cuda.is_available(),
                **run.precision}
    if length_grouping:
        settings.update(batching.length_grouping())  # little padding: similar lengths per batch
    if run.seed is not None:
        settings["seed"] = run.seed
    if best_metric:
        settings.update(save_total_limit=2, load_best_model_at_end=True, metric_for_best_model=best_metric)
    else:
        settings["save_total_limit"] = 1
    return {**settings, **recipe}


@pytest.fixture
def local(tmp_path, monkeypatch):
    """A local run in an empty folder: no token, no Kaggle."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setenv(environment.KAGGLE_ROOT_VARIABLE, str(tmp_path / "no-kaggle"))
    return tmp_path


def test_start_makes_the_run_folder_and_says_where_and_on_what(local, capsys):
    run = setup.start("demo/x", "outputs/smoke/demo/x", seed=1, precision="auto")
    # The run works in its own folder until `finish` publishes it as output_dir.
    assert run.final == local / "outputs/smoke/demo/x" and not run.final.exists()
    assert run.dir == local / "outputs/smoke/demo/x.incomplete" and run.dir.is_dir()
    assert run.env.name == "local" and run.project == "demo/x" and run.seed == 1
    assert run.precision == {"bf16": False, "fp16": False}  # a CPU: fp32
    assert run.compute_dtype == torch.float32
    line = capsys.readouterr().out
    assert line.startswith("environment: local (writing under ")
    for part in ("device: CPU", "precision: {'bf16': False, 'fp16': False}", "hub token: not set",
                 f"run folder: {run.final}"):
        assert part in line


def test_a_missing_local_input_stops_before_any_folder_is_made(local):
    with pytest.raises(FileNotFoundError, match=r"(?s)data_source = 'missing.csv'.*make lab RUN=demo/x"):
        setup.start("demo/x", "outputs/run", inputs={"data_source": "missing.csv", "model_name": "owner/name"})
    assert not (local / "outputs").exists()


def test_on_kaggle_the_run_folder_is_under_its_working_folder(tmp_path, monkeypatch):
    kaggle = tmp_path / "kaggle"
    (kaggle / "working").mkdir(parents=True)
    monkeypatch.setenv(environment.KAGGLE_ROOT_VARIABLE, str(kaggle))
    run = setup.start("demo", "outputs/full/demo", show=False)
    assert run.env.name == "kaggle" and run.final == kaggle / "working" / "outputs/full/demo"
    assert run.dir.parent == run.final.parent


def test_the_token_is_passed_on_and_never_shown(local, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    run = setup.start("demo", "out", notes={"activation checkpointing": False})
    assert run.token == FAKE_TOKEN
    shown = capsys.readouterr().out + repr(run) + str(run) + run.describe()
    assert FAKE_TOKEN not in shown
    assert "hub token: set" in shown and "activation checkpointing: False" in shown


def test_a_notebook_that_reads_no_token_and_trains_nothing_says_only_where(local, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    run = setup.start("ensemble", "out", token_name=None)
    assert run.token is None and run.precision == {}
    line = capsys.readouterr().out
    assert "hub token" not in line and "precision" not in line and "device" not in line
    assert line.startswith("environment: local") and f"run folder: {run.final}" in line


def test_the_seed_seeds_python_numpy_and_torch(local):
    setup.start("demo", "out", seed=7, show=False)
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    assert drawn == (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_precision_refuses_fp16_for_a_model_that_overflows_in_it(local):
    with pytest.raises(ValueError, match="fp16"):
        setup.start("demo", "out", precision="fp16", fp16_safe=False, show=False)
    t5 = local / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match=r"this model \(t5\) overflows in fp16"):
        setup.start("demo", "out", precision="fp16", precision_model=str(t5), show=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        setup.start("demo", "out", precision="half", show=False)


def test_cpu_threads_apply_without_a_gpu(local):
    before = torch.get_num_threads()
    try:
        setup.start("demo", "out", cpu_threads=1, show=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _run(tmp_path, precision=None, seed=42):
    return setup.Run(project="demo", dir=tmp_path / "run", env=environment.Environment("local", tmp_path),
                     precision=precision or {"bf16": False, "fp16": False}, seed=seed)


# The detection notebook's recipe keywords, as make_trainer writes them.
DETECTION_RECIPE = dict(num_train_epochs=2, learning_rate=3e-5, lr_scheduler_type="cosine", warmup_steps=0.1,
                        weight_decay=0.01, per_device_train_batch_size=8, per_device_eval_batch_size=32,
                        gradient_accumulation_steps=1, ddp_find_unused_parameters=False)
DETECTION_SELECTION = dict(eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                           metric_for_best_model="roc_auc")


def _configured_run(tmp_path, **config):
    return setup.Run(project="demo", dir=tmp_path / "run", env=environment.Environment("local", tmp_path),
                     precision={"bf16": False, "fp16": False}, seed=42,
                     config={"logging_steps": 20, "report_to": "none", **config})


@pytest.mark.parametrize("save_every_steps", [0, 5])
@pytest.mark.parametrize("folder", ["checkpoints", "search"])
def test_the_detection_recipe_written_out_gets_the_arguments_the_shared_keywords_gave_it(
        tmp_path, save_every_steps, folder):
    """The detection notebook writes its recipe out (`run.training_arguments`) where it had the
    shared keywords (`setup.training_arguments`) add evaluation, saving and the best checkpoint:
    the same TrainingArguments, for the final training and the search's trials (their own
    checkpoint folder), saving every epoch or every `save_every_steps` optimizer steps."""
    run = _configured_run(tmp_path, save_every_steps=save_every_steps)
    before = TrainingArguments(**legacy_training_arguments(
        run, folder=folder, save_every_steps=save_every_steps, best_metric="roc_auc", report_to="none",
        logging_steps=20, **DETECTION_RECIPE))
    now = run.training_arguments(TrainingArguments, None, folder=folder, **DETECTION_RECIPE,
                                 **batching.length_grouping(), **DETECTION_SELECTION)
    assert now.to_dict() == before.to_dict()
    assert now.output_dir == str(run.dir / folder)


def test_a_fold_that_saves_nothing_saves_nothing_with_save_every_steps_too(tmp_path):
    """A cross-validation fold trains a fixed budget (`cv.FIXED_BUDGET`: no evaluation, no
    checkpoint): `save_every_steps` must not turn checkpoints back on for it."""
    from nbutils.remedies import cv

    run = _configured_run(tmp_path, save_every_steps=5)
    args = run.training_arguments(TrainingArguments, None, folder="cv",
                                  **(DETECTION_RECIPE | DETECTION_SELECTION | cv.FIXED_BUDGET))
    assert args.save_strategy == "no" and args.eval_strategy == "no" and not args.load_best_model_at_end
    final = run.training_arguments(TrainingArguments, None, **DETECTION_RECIPE, **DETECTION_SELECTION)
    assert final.save_strategy == "steps" and final.save_steps == 5 and final.eval_steps == 5


def _configured(tmp_path, seed=42, **config):
    return setup.Run(project="demo", dir=tmp_path / "run", env=environment.Environment("local", tmp_path),
                     precision={"bf16": False, "fp16": False}, seed=seed,
                     config={"report_to": "none", "logging_steps": 5, **config})


@pytest.mark.parametrize("save_every_steps", [0, 20])
def test_the_strategies_studys_arguments_are_what_it_wrote_before(tmp_path, save_every_steps):
    """Each run of the study: its own checkpoint folder and its own seed (each strategy trains
    once per seed), the last checkpoint kept, and losses evaluated on the study's own schedule,
    not moved to the checkpoints' (no checkpoint is chosen on them)."""
    run = _configured(tmp_path, save_every_steps=save_every_steps)
    folder = run.dir / "checkpoints" / "full_s43"
    recipe = dict(num_train_epochs=4, learning_rate=2e-3, lr_scheduler_type="linear", warmup_steps=0.1,
                  weight_decay=0.01, per_device_train_batch_size=16, per_device_eval_batch_size=64,
                  gradient_accumulation_steps=1, eval_strategy="steps", eval_steps=15, logging_steps=5)
    before = TrainingArguments(**legacy_training_arguments(
        run, folder=folder, save_every_steps=save_every_steps, evaluate=False, report_to="none", seed=43,
        use_cpu=True, **recipe))
    now = run.training_arguments(TrainingArguments, folder=folder, seed=43, use_cpu=True, save_strategy="epoch",
                                 **batching.length_grouping(), **recipe)
    assert now.to_dict() == before.to_dict()
    assert now.seed == 43 and now.output_dir == str(folder) and now.eval_steps == 15
    assert now.save_strategy == ("steps" if save_every_steps else "epoch")


@pytest.mark.parametrize("save_every_steps", [0, 20])
def test_text_to_pandas_arguments_are_what_it_wrote_before(tmp_path, save_every_steps):
    """The lowest validation loss kept: evaluation follows the checkpoints, whichever schedule."""
    run = _configured(tmp_path, save_every_steps=save_every_steps)
    recipe = dict(num_train_epochs=6, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.0,
                  weight_decay=0.01, per_device_train_batch_size=16, per_device_eval_batch_size=32,
                  gradient_accumulation_steps=1, greater_is_better=False, logging_steps=5)
    before = Seq2SeqTrainingArguments(**legacy_training_arguments(
        run, save_every_steps=save_every_steps, best_metric="eval_loss", use_cpu=True, **recipe))
    now = run.training_arguments(Seq2SeqTrainingArguments, use_cpu=True, eval_strategy="epoch",
                                 save_strategy="epoch", load_best_model_at_end=True,
                                 metric_for_best_model="eval_loss", **batching.length_grouping(), **recipe)
    assert now.to_dict() == before.to_dict()
    assert now.seed == 42 and now.save_total_limit == 2
    assert now.eval_strategy == now.save_strategy == ("steps" if save_every_steps else "epoch")


def test_resume_from_finds_the_last_complete_checkpoint(tmp_path, capsys):
    run = _run(tmp_path)
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = run.dir / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / checkpoints.STATE_FILE).write_text(json.dumps({"global_step": step, "max_steps": 10}))
    assert run.resume_from(True) == str(run.dir / "checkpoints" / "checkpoint-4")
    assert run.resume_from(False) is None
    assert run.resume_from(True, "elsewhere") is None
    assert "resuming from" in capsys.readouterr().out


@pytest.mark.parametrize("save_every_steps", [0, 5])
@pytest.mark.parametrize("packing", [True, False])
def test_the_instruction_notebooks_sft_config_is_what_it_wrote_before(tmp_path, save_every_steps, packing):
    """The held-out loss per epoch draws the loss curve only: with `save_every_steps` the
    checkpoints move to those steps and the evaluation stays per epoch; the last checkpoint is
    kept. The batching decision's keywords (packed: the evaluation's batch size too) win over
    the recipe's `eval_batch_size`, as they did."""
    from trl import SFTConfig

    run = _configured(tmp_path, save_every_steps=save_every_steps)
    decided = ({"max_length": 192, "packing": True, "packing_strategy": "bfd", "padding_free": True,
                "per_device_train_batch_size": 1, "gradient_accumulation_steps": 9, "per_device_eval_batch_size": 1}
               if packing else {"max_length": 192, "packing": False, "padding_free": False,
                                **batching.length_grouping(), "per_device_train_batch_size": 16,
                                "gradient_accumulation_steps": 1})
    recipe = dict(num_train_epochs=3, learning_rate=2e-2, lr_scheduler_type="cosine", warmup_steps=0.05,
                  weight_decay=0.001, max_grad_norm=0.3, optim="adamw_torch", activation_checkpointing=False,
                  completion_only_loss=True, eval_packing=False, use_cpu=True)
    settings = legacy_training_arguments(run, save_every_steps=save_every_steps, evaluate=False, report_to="none",
                                        length_grouping=False, per_device_eval_batch_size=32, eval_strategy="epoch",
                                        logging_steps=5, **recipe)
    before = SFTConfig(**{**settings, **decided})
    now = run.training_arguments(SFTConfig, **recipe, **{"per_device_eval_batch_size": 32, **decided},
                                 eval_strategy="epoch", save_strategy="epoch")
    assert now.to_dict() == before.to_dict()
    assert now.eval_strategy == "epoch" and now.save_total_limit == 1
    assert now.save_strategy == ("steps" if save_every_steps else "epoch")
    assert now.per_device_eval_batch_size == (1 if packing else 32)
