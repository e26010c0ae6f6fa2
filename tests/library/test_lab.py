"""Exploring in JupyterLab and publishing the Hugging Face way: the rerun message, the missing-
input message, quiet output, model cards and the upload call (unit tests; the notebook runs
are in tests/notebooks/test_lab_notebooks.py)."""

import io
import json
import logging
from unittest import mock

import pytest

from nbutils.run import checkpoints, environment, model_card, quiet

# What transformers 5.24 logs when a tiny BERT masked-LM checkpoint gets a classification head
# (copied from an executed smoke notebook).
FRESH_HEAD_REPORT = (
    "\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: .cache/tiny-models/bert\n"
    "Key                                        | Status     | \n"
    "-------------------------------------------+------------+-\n"
    "cls.predictions.bias                       | UNEXPECTED | \n"
    "cls.predictions.transform.dense.weight     | UNEXPECTED | \n"
    "bert.pooler.dense.bias                     | MISSING    | \n"
    "classifier.weight                          | MISSING    | \n"
    "classifier.bias                            | MISSING    | \n\n"
    "Notes:\n- UNEXPECTED:\tcan be ignored when loading from different task/architecture; not ok if you "
    "expect identical arch.\n- MISSING:\tthose params were newly initialized because missing from the "
    "checkpoint. Consider training on your downstream task.\n")


# --- a rerun that finds a finished run says so -------------------------------------------------

def _state(folder, step, max_steps):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    return folder


def test_resuming_a_finished_run_says_nothing_is_trained_and_how_to_start_afresh(tmp_path, capsys):
    _state(tmp_path / "checkpoint-20", 20, 40)
    finished = _state(tmp_path / "checkpoint-40", 40, 40)
    assert checkpoints.resume_checkpoint(tmp_path) == str(finished)
    out = capsys.readouterr().out
    assert "NOTHING IS TRAINED" in out and "step 40 of 40" in out and "resume = False" in out


def test_resuming_an_interrupted_run_does_not_claim_it_finished(tmp_path, capsys):
    _state(tmp_path / "checkpoint-20", 20, 40)
    checkpoints.resume_checkpoint(tmp_path)
    out = capsys.readouterr().out
    assert "resuming from" in out and "NOTHING IS TRAINED" not in out
    assert checkpoints.finished_steps(tmp_path / "checkpoint-20") == 0
    assert checkpoints.finished_steps(tmp_path / "nowhere") == 0


# --- the stored notebook with its full defaults -------------------------------------------------

def test_a_missing_local_input_stops_with_how_to_run_at_small_scale(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        environment.require_inputs("detect_ai_text/deberta",
                                   data_source="/kaggle/input/daigt-v2-train-dataset/train_v2_drcat_02.csv",
                                   model_name="microsoft/deberta-v3-base")
    message = str(error.value)
    assert "data_source" in message and "model_name" not in message  # online, hub ids are left alone
    assert "make lab RUN=detect_ai_text/deberta PROFILE=smoke" in message
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "data.csv").write_text("text,label\n")
    environment.require_inputs("p", data_source="data.csv", model_name="google/flan-t5-base", empty="")


def test_offline_a_hub_id_with_nothing_cached_stops_with_the_same_hint(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="model_name = 'google/flan-t5-base' .HF_HUB_OFFLINE") as error:
        environment.require_inputs("summarize_dialogues/flan_t5_base", model_name="google/flan-t5-base",
                                   data_source=str(tmp_path))
    assert "make lab RUN=summarize_dialogues/flan_t5_base PROFILE=smoke" in str(error.value)
    (tmp_path / "hub" / "models--google--flan-t5-base").mkdir(parents=True)
    environment.require_inputs("p", model_name="google/flan-t5-base")


# --- quiet output --------------------------------------------------------------------------------

def _emit(logger_name, message, *args):
    quiet.install_filters()
    logger = logging.getLogger(logger_name)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    # Earlier tests may have left the library's logger quieter (transformers' verbosity) or
    # disabled (a dictConfig elsewhere): what is tested here is the filter alone.
    saved = logger.level, logger.disabled
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    logger.addHandler(handler)
    try:
        logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.disabled = saved[1]
    return stream.getvalue()


def test_known_noise_is_dropped_and_other_warnings_of_the_same_loggers_stay():
    assert _emit("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from "
                 "kernels-community: %s. Please make sure ...", "No module named 'kernels'") == ""
    assert _emit("transformers.trainer_utils", "mtime may not be reliable on this filesystem, falling back "
                 "to numerical ordering") == ""
    assert "out of memory" in _emit("bitsandbytes.backends.cpu.ops", "out of memory")
    assert "something else" in _emit("transformers.trainer_utils", "something else")


def test_a_fresh_head_load_report_becomes_one_explaining_line_on_stdout(capsys):
    """A note, not a warning: nothing reaches the log's handler (stderr, a red box in a notebook)."""
    assert _emit("transformers.modeling_utils", FRESH_HEAD_REPORT) == ""
    out = capsys.readouterr().out
    assert "LOAD REPORT" not in out and "UNEXPECTED" not in out
    assert out.count("\n") == 1
    assert "BertForSequenceClassification: new task head initialised" in out
    assert "bert.pooler.dense" in out and "classifier" in out and "(cls)" in out


def test_a_load_report_naming_other_weights_is_left_whole():
    wrong_checkpoint = FRESH_HEAD_REPORT.replace("bert.pooler.dense.bias", "bert.encoder.layer.0.attention.self.query.weight")
    assert "LOAD REPORT" in _emit("transformers.modeling_utils", wrong_checkpoint)
    mismatch = FRESH_HEAD_REPORT.replace("classifier.bias                            | MISSING ",
                                         "classifier.bias                            | MISMATCH")
    assert "LOAD REPORT" in _emit("transformers.modeling_utils", mismatch)


def test_headless_progress_bars_write_one_final_line():
    stream = io.StringIO()
    bar = quiet.final_line_tqdm()(range(37), desc="Loading weights", file=stream, disable=False)
    for _ in bar:
        assert stream.getvalue() == ""  # nothing drawn while running (no frozen 0% bar)
    text = stream.getvalue()
    assert "Loading weights: 100%" in text and "37/37" in text
    assert "0%|" not in text.replace("100%|", "") and text.count("\n") == 1


def test_install_switches_progress_bars_only_when_headless(monkeypatch):
    import tqdm.auto

    original = tqdm.auto.tqdm
    try:
        monkeypatch.delenv(quiet.HEADLESS_VARIABLE, raising=False)
        quiet.install()
        assert tqdm.auto.tqdm is original
        monkeypatch.setenv(quiet.HEADLESS_VARIABLE, "1")
        quiet.install()
        assert getattr(tqdm.auto.tqdm, "_nbutils_final_line", False)
    finally:
        tqdm.auto.tqdm = original


def test_headless_runs_use_ipc_kernels():
    """Over TCP every headless kernel logs `Kernel is running over TCP without encryption`."""
    from tools import runner

    assert runner.headless_kernel_manager()().transport == "ipc"


# --- model cards and the upload ------------------------------------------------------------------

RECORD = {
    "schema_version": 1, "project": "detect_ai_text/deberta", "profile": "full", "task": "ai-text-detection",
    "model": "microsoft/deberta-v3-base",
    "data": {"source": "/kaggle/input/daigt-v2-train-dataset/train_v2_drcat_02.csv", "fingerprint": "sha256:ab",
             "train": 800, "validation": 100, "test": 100},
    "metrics": {"accuracy": 0.97, "roc_auc": 0.991, "threshold": 0.42, "cv": {"roc_auc": {"mean": 0.99}},
                "intervals": {"roc_auc": {"low": 0.981, "high": 0.997, "level": 0.95, "resamples": 1000}},
                "measured_on": {"accuracy": "test", "roc_auc": "test"}},
    "primary_metric": "roc_auc", "baselines": {"tfidf_logreg": {"roc_auc": 0.98}},
    "train": {"runtime_s": 100.0, "samples_per_s": 8.0, "epochs": 2.0, "processes": 1},
    "parameters": {"trainable": 184_000_000, "total": 184_000_000}, "seed": 42,
    "config": {"epochs": 2, "learning_rate": 3e-5, "batch_size": 8, "push_to_hub": False},
    "versions": {"python": "3.11.7", "transformers": "5.24.0", "peft": "0.21.2"},
    "git": {"commit": "abc123", "dirty": False},
}


def test_the_model_card_carries_the_run_and_passes_huggingface_hub_metadata_validation(tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    path = model_card.write_card(tmp_path, RECORD)
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)  # parses the YAML header into ModelCardData (validates eval results)
    data = card.data.to_dict()
    assert data["base_model"] == "microsoft/deberta-v3-base"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification"
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "detect_ai_text-deberta"
    assert {(r.metric_type, r.metric_value, r.dataset_split, r.task_type) for r in results} == {
        ("accuracy", 0.97, "test", "text-classification"), ("roc_auc", 0.991, "test", "text-classification")}
    assert eval_results_to_model_index(name, results) == data["model-index"]  # round trip
    text = path.read_text()
    for expected in ("train_v2_drcat_02.csv", "| learning_rate | 3e-05 |", "transformers 5.24.0",
                     "tfidf_logreg", "abc123", "800", "| roc_auc | 0.9910 | 0.9810 to 0.9970 | test |"):
        assert expected in text, expected
    assert "threshold" not in data["model-index"][0]["results"].__repr__()  # a cut is no result


def test_the_card_publishes_each_result_with_the_split_it_was_measured_on_and_the_data_the_run_read(tmp_path):
    """Instruction tuning's held-out slice of train is no test split; a smoke run read sample
    data, not the corpus its full profile names."""
    from huggingface_hub import ModelCard

    metrics = {"perplexity": 5.2, "eval_tokens": 9000, "scored": 40,
               "intervals": {"perplexity": {"low": 4.9, "high": 5.6, "level": 0.95, "resamples": 1000}},
               "measured_on": {"perplexity": "held-out slice of train"}}
    local = {**RECORD, "task": "instruction-tuning", "metrics": metrics, "primary_metric": "perplexity",
             "baselines": {"before_training": {"perplexity": 1260.5, "eval_tokens": 1895}},
             "data": {**RECORD["data"], "source": ".cache/sample-data/samsum"}, "profile": "smoke"}
    card = ModelCard.load(model_card.write_card(tmp_path, local))
    assert [(r.metric_type, r.dataset_split, r.dataset_name) for r in card.data.eval_results] == [
        ("perplexity", "held-out slice of train", ".cache/sample-data/samsum")]
    text = (tmp_path / "README.md").read_text()
    assert "eval_tokens" not in text.split("## Training")[0] and "| scored |" not in text
    assert "Baselines on the same rows: before_training: perplexity 1260.5000\n" in text


def test_a_local_base_model_is_not_named_as_a_hub_base_model(tmp_path):
    from huggingface_hub import ModelCard

    local = {**RECORD, "model": ".cache/tiny-models/bert", "profile": "smoke"}
    card = ModelCard.load(model_card.write_card(tmp_path, local, library_name="peft"))
    assert card.data.base_model is None and card.data.library_name == "peft"
    assert "peft" in card.data.tags


def test_push_to_hub_uploads_the_folder_to_a_private_repo_without_printing_the_token(tmp_path, capsys):
    api = mock.Mock()
    api.upload_folder.return_value = mock.Mock(commit_url="https://huggingface.co/me/detector/commit/1")
    url = model_card.publish(tmp_path, True, "me/detector", True, "hf_secret", api=api)
    assert url.endswith("/commit/1")
    api.create_repo.assert_called_once_with(repo_id="me/detector", repo_type="model", private=True,
                                            exist_ok=True, token="hf_secret")
    api.upload_folder.assert_called_once()
    upload = api.upload_folder.call_args.kwargs
    assert upload["repo_id"] == "me/detector" and upload["folder_path"] == str(tmp_path)
    assert upload["token"] == "hf_secret"
    assert "hf_secret" not in capsys.readouterr().out


def test_push_to_hub_is_off_by_default_and_checks_its_inputs(tmp_path):
    api = mock.Mock()
    assert model_card.publish(tmp_path, False, "", True, None, api=api) is None
    api.create_repo.assert_not_called()
    with pytest.raises(ValueError, match="hub_repo_id"):
        model_card.publish(tmp_path, True, "", True, "tok", api=api)
    with pytest.raises(ValueError, match="HF_TOKEN"):
        model_card.publish(tmp_path, True, "me/x", True, None, api=api)
