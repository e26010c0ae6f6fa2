"""End to end: the detection notebook on all four backbones, through papermill, offline.

This is the smoke run CI relies on, and also the "it learns" test: tiny random models trained
for a few epochs on the sample essays must beat chance clearly on the held-out test split.
"""

import json

import nbformat
import pandas as pd
import pytest

from conftest import ROOT, run_smoke_project
from nbutils.run import record
from tools import runner

BACKBONES = ("bert", "deberta", "distilbert", "roberta")


@pytest.fixture(scope="module")
def runs(smoke_run):
    return smoke_run("detect_ai_text")  # (runner exit code, outputs/smoke folder)


def test_all_four_backbones_run(runs):
    code, folder = runs
    statuses = {b: (folder / "detect_ai_text" / b / "metrics.json").is_file() for b in BACKBONES}
    assert code == 0 and all(statuses.values()), statuses


@pytest.mark.parametrize("backbone", BACKBONES)
def test_run_record_follows_the_schema(runs, backbone):
    rec = record.read_record(runs[1] / "detect_ai_text" / backbone)
    assert tuple(rec) == record.RECORD_FIELDS
    assert rec["schema_version"] == record.SCHEMA_VERSION
    assert rec["project"] == f"detect_ai_text/{backbone}" and rec["profile"] == "smoke"
    assert rec["primary_metric"] == "roc_auc"
    scores = {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert set(rec["metrics"]) == scores | {"threshold", "threshold_chosen_on", "intervals", "measured_on",
                                            "vs_baseline", "by_prompt"}
    assert set(rec["baselines"]["tfidf_logreg"]) == scores | {"threshold", "intervals", "settings", "grid"}
    # The sample's 643 rows less the 7 the malformed-row rule drops (empty essays, duplicates).
    assert rec["data"]["report"]["rows"] == {"read": 643, "kept": 636, "repaired": 3, "dropped": 7}
    assert rec["data"]["train"] + rec["data"]["validation"] + rec["data"]["test"] == 636
    assert rec["train"]["runtime_s"] > 0 and rec["train"]["samples_per_s"] > 0
    assert 0 < rec["parameters"]["trainable"] <= rec["parameters"]["total"]
    assert rec["config"]["model_name"].startswith(".cache/tiny-models/")
    assert rec["versions"]["transformers"] and rec["git"]["commit"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_training_spends_its_token_slots_on_real_tokens(runs, backbone):
    """Dynamic padding with length-grouped batches (issue 8): the record counts the real tokens
    and token slots of training. On this sample data (10th/50th/90th percentile 47/87/128 tokens
    at max_length 128) random batches of 16 padded to their longest essay keep about 0.68 of the
    slots real; length grouping gets above 0.9."""
    train = record.read_record(runs[1] / "detect_ai_text" / backbone)["train"]
    assert 0 < train["real_tokens"] <= train["token_slots"]
    assert train["padding_efficiency"] == pytest.approx(train["real_tokens"] / train["token_slots"], abs=1e-3)
    assert train["padding_efficiency"] >= 0.9, train
    assert train["tokens_per_s"] > 0


@pytest.mark.parametrize("backbone", BACKBONES)
def test_it_learns(runs, backbone):
    metrics = record.read_record(runs[1] / "detect_ai_text" / backbone)["metrics"]
    assert metrics["accuracy"] >= 0.75, metrics
    assert metrics["roc_auc"] >= 0.85, metrics


@pytest.mark.parametrize("backbone", BACKBONES)
def test_run_leaves_model_probabilities_and_plots(runs, backbone):
    run_dir = runs[1] / "detect_ai_text" / backbone
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert not list((run_dir / "model").glob("pytorch_model*.bin")), "weights as safetensors only"
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["problem_type"] == "single_label_classification"
    assert config["id2label"] == {"0": "human", "1": "generated"}
    assert (run_dir / "model" / "tokenizer.json").is_file()
    rec = record.read_record(run_dir)
    for split in ("test", "validation"):
        probs = pd.read_csv(run_dir / f"{split}_probabilities.csv")
        assert list(probs.columns) == ["row_id", "label", "prob_generated", "group"]
        assert len(probs) == rec["data"][split] and probs["row_id"].is_unique
        assert set(probs["label"]) == {0, 1} and probs["prob_generated"].between(0, 1).all()
    for plot in ("loss_curves.png", "confusion_matrix.png", "roc_curve.png"):
        assert (run_dir / plot).stat().st_size > 5000
    assert (run_dir / "detect_ai_text.ipynb").is_file()


def test_backbones_score_the_same_test_essays(runs):
    """The ensemble notebook relies on this: same split, same row ids, same order."""
    frames = [pd.read_csv(runs[1] / "detect_ai_text" / b / "test_probabilities.csv") for b in BACKBONES]
    for frame in frames[1:]:
        assert frame["row_id"].tolist() == frames[0]["row_id"].tolist()


def test_executed_notebook_shows_plots_inline(runs):
    nb = nbformat.read(runs[1] / "detect_ai_text" / "bert" / "detect_ai_text.ipynb", as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 3


def _run_bad(tmp_path, **overrides):
    return run_smoke_project("detect_ai_text/distilbert", tmp_path, **overrides)


@pytest.mark.slow
def test_missing_data_file_is_named(cache, tmp_path):
    result = _run_bad(tmp_path, data_source=".cache/sample-data/no_such_file.csv")
    assert result.status == "failed"
    # Checked before the run folder is made (environment.require_inputs): the parameter, the path.
    assert "not found: data_source = '.cache/sample-data/no_such_file.csv'" in result.error


@pytest.mark.slow
def test_missing_label_column_is_named_with_the_columns_present(cache, tmp_path):
    # (`generated` would be found: it is the known other name of `label`, data.COLUMN_ALIASES)
    result = _run_bad(tmp_path, label_column="is_ai_written")
    assert result.status == "failed"
    assert "label_column='is_ai_written' is not a column" in result.error
    assert "columns present: text, label, prompt_name, source, RDizzl3_seven" in result.error


@pytest.mark.slow
def test_non_binary_label_column_is_rejected(cache, tmp_path):
    result = _run_bad(tmp_path, label_column="prompt_name")
    assert result.status == "failed"
    assert "label column 'prompt_name' must hold exactly two classes" in result.error


@pytest.mark.slow
def test_freezing_with_gradual_unfreezing_stops_in_the_set_up_cell(cache, tmp_path):
    """Two settings that exclude each other stop the run in the set-up cell, before any process
    is launched or any data is read."""
    result = _run_bad(tmp_path, freeze_to=2, gradual_unfreezing=True)
    assert result.status == "failed"
    assert "freeze_to and gradual_unfreezing exclude each other" in result.error
    executed = nbformat.read(result.notebook, as_version=4)
    failed = [c.source for c in executed.cells if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "run = nb.run.start(globals()" in failed[0]


# --- Fine-tuning technique variants (params/detect_ai_text/smoke/<backbone>_<technique>.yaml).
# Each must run in the smoke profile and leave its results in the run record.

VARIANTS = ("bert_gradual", "distilbert_cv", "roberta_search")


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_runs_and_keeps_the_record_schema(runs, variant):
    rec = record.read_record(runs[1] / "detect_ai_text" / variant)
    assert tuple(rec) == record.RECORD_FIELDS and rec["project"] == f"detect_ai_text/{variant}"
    assert {"accuracy", "precision", "recall", "f1", "roc_auc"} <= set(rec["metrics"])
    json.dumps(rec, allow_nan=False)  # technique results are plain, valid JSON


def test_gradual_unfreezing_with_discriminative_rates_is_recorded_and_learns(runs):
    rec = record.read_record(runs[1] / "detect_ai_text" / "bert_gradual")
    groups = rec["metrics"]["layer_groups"]
    # One more group every 10 steps from the head down, then the whole model trains.
    assert [(h["step"], h["group"]) for h in groups["unfreezing"]] == [
        (0, "head"), (10, "encoder.layer.1"), (20, "encoder.layer.0"), (30, "embeddings")]
    assert groups["trainable_at_end"] == rec["parameters"]["total"]
    # Layer-wise decay 0.6: each group's rate is 0.6 times the rate of the group above.
    rates = groups["learning_rates"]
    order = ["embeddings", "encoder.layer.0", "encoder.layer.1", "head"]
    assert rates["head"] == pytest.approx(rec["config"]["learning_rate"])
    for lower, upper in zip(order, order[1:]):
        assert rates[lower] == pytest.approx(0.6 * rates[upper])
    assert rec["metrics"]["roc_auc"] >= 0.8, "the unfrozen layers must have learned"


def test_grouped_cross_validation_is_recorded(runs):
    rec = record.read_record(runs[1] / "detect_ai_text" / "distilbert_cv")
    cv = rec["metrics"]["cv"]
    assert cv["folds"] == 3 and cv["group_column"] == "prompt_name"
    for name in ("accuracy", "roc_auc"):
        folds = cv["metrics"][name]["folds"]
        assert len(folds) == 3 and cv["metrics"][name]["mean"] == pytest.approx(sum(folds) / 3)
        assert cv["metrics"][name]["std"] >= 0
    # Train + validation pooled; every prompt validated in exactly one fold.
    assert sum(f["validation"] for f in cv["sizes"]) == rec["data"]["train"] + rec["data"]["validation"]
    validated = [g for f in cv["sizes"] for g in f["validation_groups"]]
    assert len(validated) == len(set(validated)) >= 3
    # The second source joined the training rows, less its essays of the held-out prompts (its
    # prompt_id mapped onto prompt_name); the test is scored per generator.
    overlap = rec["data"]["overlap"]["competition"]
    assert overlap["rows"] == 120 and overlap["no_group"] == 0
    assert overlap["removed"] == overlap["same_group_as_held_out"] > 0
    assert rec["data"]["sources"]["competition"]["rows"] == overlap["kept"] == 120 - overlap["removed"]
    assert rec["data"]["training_rows"] == rec["data"]["train"] + overlap["kept"]
    by_group = rec["metrics"]["by_group"]
    assert "persuade_corpus" in by_group and sum(g["rows"] for g in by_group.values()) == rec["data"]["test"]


def test_three_trial_search_and_out_of_domain_test_are_recorded(runs):
    rec = record.read_record(runs[1] / "detect_ai_text" / "roberta_search")
    found = rec["metrics"]["search"]
    trials = found["trials"]
    assert len(trials) == 3 and {t["state"] for t in trials} == {"COMPLETE"}
    best = max(trials, key=lambda t: t["objective"])
    assert found["best_objective"] == best["objective"]
    assert found["best"] == {k: best[k] for k in rec["config"]["hpo_space"]}
    for t in trials:
        assert t["batch_size"] in (16, 32) and t["epochs"] in (2, 3)
        assert 5e-4 <= t["learning_rate"] <= 5e-3
    # The final training ran with the best trial's settings.
    assert rec["train"]["epochs"] == best["epochs"]
    # The trials trained on the subsample and saved no checkpoints; the cost was estimated first.
    assert found["train_rows"] == rec["config"]["hpo_train_rows"] == 200
    assert found["expected_cost"]["disk_gb"] == 0 and found["expected_cost"]["pflop"] > 0
    assert not list((runs[1] / "detect_ai_text" / "roberta_search").rglob("run-*/checkpoint-*"))
    # The study lives in a SQLite file in the run folder (a rerun would continue it), under the
    # name derived from the project, model and seed; this run ran all of its trials.
    assert found["storage"] == {"kind": "sqlite", "url": "sqlite:///" + str(
        (runs[1] / "detect_ai_text" / "roberta_search" / "hpo.sqlite3").resolve())}
    assert found["study"].startswith(f"detect_ai_text/roberta_search:{rec['model']}:seed{rec['seed']}:")
    assert found["trials_asked"] == found["trials_complete"] == found["trials_this_process"] == 3
    assert {t["worker"] for t in trials} == {found["worker"]}
    # The memory estimate printed before loading counted, from the config alone, the model trained.
    estimate = rec["train"]["memory_estimate"]
    assert estimate["parameters"]["total"] == estimate["parameters"]["trainable"] == rec["parameters"]["total"]
    assert estimate["bytes_per_process"]["total"] == 16 * rec["parameters"]["total"]  # fp32 AdamW, one process
    ood = rec["metrics"]["out_of_domain"]
    assert ood["column"] == "prompt_name" and ood["values"] == ["Facial action coding system"]
    assert ood["rows"] == rec["data"]["out_of_domain"] > 0
    assert "Facial action coding system" not in rec["metrics"]["by_prompt"]
    assert set(ood["model"]) == set(ood["tfidf_logreg"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}


@pytest.mark.slow
def test_missing_cv_group_column_is_named(cache, tmp_path):
    result = _run_bad(tmp_path, cv_folds=3, group_column="prompt")
    assert result.status == "failed"
    assert "group_column='prompt' is not a column" in result.error


@pytest.mark.slow
def test_freeze_to_beyond_the_layer_groups_is_named(cache, tmp_path):
    result = _run_bad(tmp_path, freeze_to=5)
    assert result.status == "failed"
    assert "freeze_to=5 is out of range" in result.error and "4 layer groups" in result.error



# --- honest numbers: the threshold, the folds, the splits (issue 16)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_threshold_is_chosen_on_validation_and_reported(runs, backbone):
    """The record's threshold is the most accurate cut on the run's own validation
    probabilities, and the test accuracy is measured at it (not at a fixed 0.5)."""
    from nbutils import metrics

    folder = runs[1] / "detect_ai_text" / backbone
    rec = record.read_record(folder)
    val = pd.read_csv(folder / "validation_probabilities.csv")
    test = pd.read_csv(folder / "test_probabilities.csv")
    cut, _ = metrics.choose_threshold(val["label"], val["prob_generated"])
    assert rec["metrics"]["threshold_chosen_on"] == "validation"
    assert rec["metrics"]["threshold"] == pytest.approx(cut)
    assert rec["metrics"]["accuracy"] == pytest.approx(((test["prob_generated"] >= cut) == test["label"]).mean())
    assert 0 < rec["baselines"]["tfidf_logreg"]["threshold"] < 1


def test_folds_are_scored_on_rows_that_chose_nothing(runs):
    """Each fold trained its fixed budget: no evaluation ran during its training, its last
    weights were scored, and its training rows lost the second source's essays of its own
    validation prompts."""
    cv = record.read_record(runs[1] / "detect_ai_text" / "distilbert_cv")["metrics"]["cv"]
    assert cv["selection"].startswith("fixed budget")
    for fold in cv["sizes"]:
        assert fold["evaluations_during_training"] == 0 and fold["checkpoint"] == "last"
        assert fold["overlap"]["competition"]["same_group_as_held_out"] > 0


@pytest.mark.parametrize("project", BACKBONES + VARIANTS)
def test_record_holds_split_sizes_and_the_hashes_of_the_rows_scored(runs, project):
    """The record's split hashes are those of the row ids the run wrote probabilities for."""
    folder = runs[1] / "detect_ai_text" / project
    data = record.read_record(folder)["data"]
    assert set(data["split_hashes"]) == {"train", "validation", "test"}
    for split in ("validation", "test"):
        rows = pd.read_csv(folder / f"{split}_probabilities.csv")
        assert len(rows) == data[split]
        assert record.split_hash(rows) == data["split_hashes"][split]


def test_summary_tells_runs_on_other_splits_apart(runs):
    """The four backbones scored the same rows and show one digest; the variants that split
    other rows (a subset by prompt, a held-out domain) show others."""
    digests = {p: record.splits_digest(record.read_record(runs[1] / "detect_ai_text" / p))
               for p in BACKBONES + VARIANTS}
    assert len({digests[b] for b in BACKBONES}) == 1
    assert digests["distilbert_cv"] != digests["bert"] != digests["roberta_search"]



# --- numbers you can compare: intervals, the split of each result, the tuned baseline (issue 27)


@pytest.mark.parametrize("project", BACKBONES + VARIANTS)
def test_headline_has_an_interval_that_holds_it_and_says_where_it_was_measured(runs, project):
    rec = record.read_record(runs[1] / "detect_ai_text" / project)
    metrics = rec["metrics"]
    for name in ("roc_auc", "accuracy"):
        interval = metrics["intervals"][name]
        assert interval["level"] == 0.95 and interval["resamples"] == 1000
        assert interval["low"] <= metrics[name] <= interval["high"], (name, metrics[name], interval)
        assert interval["low"] < interval["high"] or metrics[name] == 1.0
    # Every real test result, named with its split; the threshold and the techniques' tables are no result.
    test_split = "test (prompts unseen in training)" if rec["config"].get("group_column") else "test"
    expected = dict.fromkeys(("accuracy", "precision", "recall", "f1", "roc_auc"), test_split)
    if "out_of_domain" in metrics:
        expected["out_of_domain_roc_auc"] = "out-of-domain test (prompt_name in ['Facial action coding system'])"
        assert metrics["out_of_domain_roc_auc"] == metrics["out_of_domain"]["model"]["roc_auc"]
    assert metrics["measured_on"] == expected
    # The paired bootstrap against the baseline scored on the same test essays, and its sentence.
    paired = metrics["vs_baseline"]
    baseline = rec["baselines"]["tfidf_logreg"]
    assert paired["difference"] == pytest.approx(metrics["roc_auc"] - baseline["roc_auc"], abs=1e-9)
    assert paired["low"] <= paired["difference"] <= paired["high"]
    assert paired["within_noise"] == (paired["low"] <= 0 <= paired["high"])
    assert ("within noise" in paired["conclusion"]) == paired["within_noise"]
    assert baseline["intervals"]["roc_auc"]["low"] <= baseline["roc_auc"] <= baseline["intervals"]["roc_auc"]["high"]


def test_notebook_prints_the_headline_with_its_interval(runs):
    from nbutils import metrics as m

    folder = runs[1] / "detect_ai_text" / "bert"
    rec = record.read_record(folder)
    executed = nbformat.read(folder / "detect_ai_text.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    shown = m.format_interval(rec["metrics"]["roc_auc"], rec["metrics"]["intervals"]["roc_auc"])
    assert f"ROC AUC {shown}" in text
    assert rec["metrics"]["vs_baseline"]["conclusion"] in text


@pytest.mark.parametrize("project", BACKBONES + VARIANTS)
def test_test_metrics_per_prompt_are_recorded_and_the_probability_files_name_the_prompt(runs, project):
    from nbutils.tasks import ensemble

    folder = runs[1] / "detect_ai_text" / project
    rec = record.read_record(folder)
    test = pd.read_csv(folder / "test_probabilities.csv")
    by_prompt = rec["metrics"]["by_prompt"]
    # the sample's five prompts, less a held-out domain's
    assert set(by_prompt) == set(test["group"]) and len(by_prompt) >= 1
    assert sum(p["rows"] for p in by_prompt.values()) == rec["data"]["test"]
    for prompt, scores in by_prompt.items():
        rows = test[test["group"] == prompt]
        assert scores["rows"] == len(rows) and scores["generated"] == rows["label"].sum()
        if rows["label"].nunique() == 2:
            assert scores["roc_auc"] is not None and scores["tfidf_logreg_roc_auc"] is not None
    # the ensemble's reader takes the files with their new column
    for split in ("test", "validation"):
        assert len(ensemble.read_probabilities(folder / f"{split}_probabilities.csv")) == rec["data"][split]


@pytest.mark.parametrize("project", BACKBONES)
def test_baseline_is_tuned_on_validation_and_names_its_settings(runs, project):
    rec = record.read_record(runs[1] / "detect_ai_text" / project)
    baseline = rec["baselines"]["tfidf_logreg"]
    grid, settings = baseline["grid"], baseline["settings"]
    assert {(g["features"], g["C"]) for g in grid} == {
        (f, c) for f in ("word 1-2", "char_wb 3-5") for c in (0.1, 1.0, 10.0)}
    assert settings["validation_roc_auc"] == max(g["validation_roc_auc"] for g in grid)
    assert {settings["features"], settings["analyzer"]} in ({"word 1-2", "word"}, {"char_wb 3-5", "char_wb"})
    assert settings["C"] in (0.1, 1.0, 10.0)


def test_split_seed_repeats_are_recorded_beside_the_headline_with_their_cost_printed_first(runs):
    """distilbert_cv sets split_seeds: 2: its first split is the headline's, the second re-draws
    the test prompt; the record keeps both and their mean ± sd, and the notebook printed what the
    repeat would cost before training it."""
    folder = runs[1] / "detect_ai_text" / "distilbert_cv"
    rec = record.read_record(folder)
    repeats = rec["metrics"]["split_repeats"]
    assert repeats["runs"] == 2 and repeats["split_seeds"] == [rec["seed"], rec["seed"] + 1]
    first, second = repeats["repeats"]
    assert first["roc_auc"] == rec["metrics"]["roc_auc"] and first["test_rows"] == rec["data"]["test"]
    assert first["test_prompts"] == sorted(rec["metrics"]["by_prompt"])
    assert second["test_prompts"] != first["test_prompts"]  # whole prompts re-drawn
    assert repeats["roc_auc"]["mean"] == pytest.approx((first["roc_auc"] + second["roc_auc"]) / 2)
    assert repeats["roc_auc"]["sd"] == pytest.approx(abs(first["roc_auc"] - second["roc_auc"]) / 2 ** 0.5)
    assert repeats["tfidf_logreg_roc_auc"]["mean"] > 0.5
    assert not [k for k in rec["metrics"]["measured_on"] if "repeat" in k]  # no published result
    executed = nbformat.read(folder / "detect_ai_text.ipynb", as_version=4)
    cell = next(c for c in executed.cells if c.get("id") == "split-repeats")
    printed = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
    assert printed.startswith("split-seed repeats: 1 more training like this run's"), printed[:200]
    assert "mean ± sd" in printed
    # its checkpoints were not kept
    assert not list(folder.glob("split-seed-*"))


@pytest.mark.parametrize("project", ("bert", "deberta", "distilbert", "roberta", "bert_gradual", "roberta_search"))
def test_runs_without_repeats_record_none(runs, project):
    assert "split_repeats" not in record.read_record(runs[1] / "detect_ai_text" / project)["metrics"]
