"""The detection ensemble: runs are combined only when aligned, the stacker never sees the rows
it is scored on, every threshold comes from validation, and the smoke project runs on the
session's detection runs."""

import json
import re
from types import SimpleNamespace

import nbformat
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_smoke_project
from nbutils.tasks import ensemble
from nbutils.run import record
from tools import runner
from nbutils.tasks.ensemble import EnsembleError

VALIDATION_IDS = np.arange(0, 80)
TEST_IDS = np.arange(100, 160)


def synthetic_split(ids, seed):
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * (len(ids) // 2))
    rng.shuffle(labels)
    return ids, labels


def write_run(runs_dir, name, strength, seed, splits=None, finished=True):
    """A finished detection run: its record and the two probability files, with P(generated)
    a noisy function of the label (stronger runs separate the classes better)."""
    folder = runs_dir / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    splits = splits or {"validation": synthetic_split(VALIDATION_IDS, 0), "test": synthetic_split(TEST_IDS, 1)}
    for split, (ids, labels) in splits.items():
        logits = strength * (2 * labels - 1) + rng.normal(0, 1.5, len(ids))
        pd.DataFrame({"row_id": ids, "label": labels, "prob_generated": 1 / (1 + np.exp(-logits))}) \
            .to_csv(ensemble.probability_file(folder, split), index=False)
    if finished:
        (folder / record.RECORD_FILE).write_text(json.dumps(
            {"project": f"detect_ai_text/{name}", "model": f"model-{name}", "metrics": {"roc_auc": 0.5}}))
    return folder


@pytest.fixture
def runs_dir(tmp_path):
    folder = tmp_path / "detect_ai_text"
    for i, (name, strength) in enumerate((("bert", 1.0), ("roberta", 1.5), ("deberta", 0.5))):
        write_run(folder, name, strength, seed=10 + i)
    return folder


def combine(runs_dir, names=()):
    """What the notebook does, from the files to the per-method results."""
    runs, _ = ensemble.load_runs(runs_dir, names)
    tables = ensemble.aligned_scores(runs)
    stacker = ensemble.fit_stacker(tables["validation"], folds=3, seed=0)
    methods = ensemble.method_scores(tables, stacker)
    return tables, stacker, methods, ensemble.evaluate(methods, tables)


def edit_file(path, change):
    """Rewrite a probability file with `change(table)` (returns the new table)."""
    change(pd.read_csv(path)).to_csv(path, index=False)


# --- the stacker is fitted on validation rows only ----------------------------------------


def test_fit_stacker_refuses_any_split_but_validation(runs_dir):
    runs, _ = ensemble.load_runs(runs_dir)
    tables = ensemble.aligned_scores(runs)
    with pytest.raises(EnsembleError, match="validation split only, got the 'test' split"):
        ensemble.fit_stacker(tables["test"], folds=3)


def test_stacker_refuses_to_score_rows_it_was_fitted_on(runs_dir):
    runs, _ = ensemble.load_runs(runs_dir)
    tables = ensemble.aligned_scores(runs)
    stacker = ensemble.fit_stacker(tables["validation"], folds=3)
    with pytest.raises(EnsembleError, match="fitted on 80 of these validation rows"):
        stacker.predict(tables["validation"])
    # A "test" table that smuggles in one validation row is refused too.
    test = tables["test"]
    leaky = ensemble.SplitScores("test", np.r_[test.row_ids[:-1], VALIDATION_IDS[5]], test.labels,
                                 test.probabilities)
    with pytest.raises(EnsembleError, match=r"fitted on 1 of these test rows \(row_id 5"):
        stacker.predict(leaky)
    assert stacker.predict(test).shape == (len(TEST_IDS),)


def test_every_fit_sees_validation_rows_only(runs_dir, monkeypatch):
    """Spy on every LogisticRegressionCV.fit (the final fit and the out-of-fold fits): each is
    given validation rows only, and the final fit all of them."""
    from sklearn.linear_model import LogisticRegressionCV

    runs, _ = ensemble.load_runs(runs_dir)
    tables = ensemble.aligned_scores(runs)
    seen = []
    original = LogisticRegressionCV.fit

    def spy(self, X, y, **kwargs):
        seen.append(np.asarray(X).copy())
        return original(self, X, y, **kwargs)

    monkeypatch.setattr(LogisticRegressionCV, "fit", spy)
    stacker = ensemble.fit_stacker(tables["validation"], folds=3)
    validation = ensemble.log_odds(tables["validation"].probabilities.to_numpy())
    test = ensemble.log_odds(tables["test"].probabilities.to_numpy())
    validation_rows = {tuple(row) for row in validation}
    assert len(seen) == 1 + 3  # the final fit, and one per outer fold
    for X in seen:
        assert {tuple(row) for row in X} <= validation_rows
        assert not {tuple(row) for row in X} & {tuple(row) for row in test}
    np.testing.assert_array_equal(seen[-1], validation)
    np.testing.assert_array_equal(stacker.fitted_row_ids, VALIDATION_IDS)
    assert stacker.summary()["rows"] == len(VALIDATION_IDS) and stacker.summary()["fitted_on"] == "validation"


def test_poisoned_test_split_changes_no_fit_and_no_threshold(runs_dir, tmp_path):
    """Flip every test label and scramble every test probability: the stacker (weights, C,
    out-of-fold validation scores) and every method's threshold stay exactly the same, while
    the test metrics do change, so the test split is only ever scored."""
    _, stacker, _, results = combine(runs_dir)
    rng = np.random.default_rng(7)
    for run in ("bert", "roberta", "deberta"):
        def poison(table):
            return table.assign(label=1 - table["label"], prob_generated=rng.uniform(0, 1, len(table)))
        edit_file(ensemble.probability_file(runs_dir / run, "test"), poison)
    _, poisoned, _, poisoned_results = combine(runs_dir)

    np.testing.assert_array_equal(poisoned.model.coef_, stacker.model.coef_)
    np.testing.assert_array_equal(poisoned.model.intercept_, stacker.model.intercept_)
    assert poisoned.model.C_ == stacker.model.C_
    np.testing.assert_array_equal(poisoned.validation_scores, stacker.validation_scores)
    for method in results:
        assert poisoned_results[method]["threshold"] == results[method]["threshold"]
        assert poisoned_results[method]["validation_roc_auc"] == results[method]["validation_roc_auc"]
    assert poisoned_results[ensemble.STACK]["roc_auc"] != results[ensemble.STACK]["roc_auc"]


def test_poisoned_validation_split_does_change_the_fit(runs_dir):
    """The counterpart: the validation split is what the stacker learns from."""
    _, stacker, _, _ = combine(runs_dir)
    edit_file(ensemble.probability_file(runs_dir / "deberta", "validation"),
              lambda t: t.assign(prob_generated=1 - t["prob_generated"]))
    _, changed, _, _ = combine(runs_dir)
    assert not np.allclose(changed.model.coef_, stacker.model.coef_)


def test_too_few_validation_rows_for_the_folds_is_named(runs_dir):
    runs, _ = ensemble.load_runs(runs_dir)
    tables = ensemble.aligned_scores(runs)
    with pytest.raises(EnsembleError, match="stacker_folds 39 needs at least 41 validation essays"):
        ensemble.fit_stacker(tables["validation"], folds=39)
    with pytest.raises(EnsembleError, match="stacker_folds must be at least 2"):
        ensemble.fit_stacker(tables["validation"], folds=1)


# --- thresholds and methods ------------------------------------------------------------


def test_threshold_is_the_most_accurate_cut_halfway_between_scores():
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    cut, accuracy = ensemble.choose_threshold(labels, scores)
    # Cuts at 0.6 and at 0.4 both make one mistake (7/8); the higher one, moved halfway down.
    assert accuracy == pytest.approx(7 / 8) and cut == pytest.approx(0.55)
    assert ((scores >= cut) == labels).mean() == accuracy
    separable, acc = ensemble.choose_threshold([0, 0, 1, 1], [0.02, 0.05, 0.93, 0.97])
    assert acc == 1.0 and separable == pytest.approx(0.49)


def test_every_method_is_scored_with_its_own_validation_threshold(runs_dir):
    tables, _, methods, results = combine(runs_dir)
    assert list(results) == ["bert", "deberta", "roberta", ensemble.MEAN, ensemble.RANK, ensemble.STACK]
    for name, scores in methods.items():
        cut, _ = ensemble.choose_threshold(tables["validation"].labels, scores["validation"])
        assert results[name]["threshold"] == cut
        predicted = (scores["test"] >= cut).astype(int)
        assert results[name]["accuracy"] == pytest.approx((predicted == tables["test"].labels).mean())
    # Each run alone is its own probabilities; the mean is their mean.
    np.testing.assert_array_equal(methods["bert"]["test"], tables["test"].probabilities["bert"])
    np.testing.assert_allclose(methods[ensemble.MEAN]["test"], tables["test"].probabilities.mean(axis=1))


def test_rank_average_ignores_how_squeezed_a_runs_probabilities_are():
    probs = pd.DataFrame({"a": [0.1, 0.4, 0.35, 0.9], "b": [0.2, 0.1, 0.8, 0.7]})
    squeezed = probs.assign(a=probs["a"] ** 8)  # same order, very different scale
    np.testing.assert_allclose(ensemble.rank_average(probs), ensemble.rank_average(squeezed))
    assert not np.allclose(ensemble.mean_probability(probs), ensemble.mean_probability(squeezed))
    # Each row's share of the rows scored below it by each run, ties counting half: a: 1/8, 5/8,
    # 3/8, 7/8; b: 3/8, 1/8, 7/8, 5/8.
    np.testing.assert_allclose(ensemble.rank_average(probs), [0.25, 0.375, 0.625, 0.75])


def placement_tables():
    """Validation: 4 human essays below 0.5, 4 generated above, for two runs. Test: the same
    models on essays they find more generated-looking: 7 generated scored 0.85 to 0.95 and one
    human scored 0.65, every one above each run's validation cut."""
    val = pd.DataFrame({"a": [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9], "b": [0.05, 0.15, 0.25, 0.35, 0.55, 0.65, 0.75, 0.85]})
    test = pd.DataFrame({"a": [0.65, 0.85, 0.87, 0.89, 0.9, 0.92, 0.94, 0.95],
                         "b": [0.6, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.92]})
    return {"validation": ensemble.SplitScores("validation", np.arange(8), np.array([0, 0, 0, 0, 1, 1, 1, 1]), val),
            "test": ensemble.SplitScores("test", np.arange(10, 18), np.array([0, 1, 1, 1, 1, 1, 1, 1]), test)}


def test_rank_average_places_test_scores_on_the_validation_distribution():
    """Every test essay scores above each run's validation cut, so at the threshold chosen on
    validation ranks all are called generated: 7 of 8 right. Ranked among themselves (as
    before), the test essays were forced onto an even spread of ranks, and the validation
    threshold on rank fractions called the lower half human: 5 of 8."""
    tables = placement_tables()
    val_ranks = ensemble.rank_average(tables["validation"].probabilities)
    test_ranks = ensemble.rank_average(tables["test"].probabilities, tables["validation"].probabilities)
    np.testing.assert_allclose(val_ranks, [1 / 16, 3 / 16, 5 / 16, 7 / 16, 9 / 16, 11 / 16, 13 / 16, 15 / 16])
    assert test_ranks.min() >= 9 / 16  # above every human validation essay, for both runs
    np.testing.assert_allclose(test_ranks[-1], 1.0)  # above every validation score
    cut, _ = ensemble.choose_threshold(tables["validation"].labels, val_ranks)
    assert ((test_ranks >= cut) == tables["test"].labels.astype(bool)).mean() == 7 / 8
    own_ranks = ensemble.rank_average(tables["test"].probabilities)  # the old way: test ranked on its own
    assert ((own_ranks >= cut) == tables["test"].labels.astype(bool)).mean() == 5 / 8


def test_the_ensembles_rank_average_uses_the_validation_placement(runs_dir):
    tables, _, methods, results = combine(runs_dir)
    np.testing.assert_allclose(methods[ensemble.RANK]["test"], ensemble.rank_average(
        tables["test"].probabilities, tables["validation"].probabilities))
    np.testing.assert_allclose(methods[ensemble.RANK]["validation"],
                               ensemble.rank_average(tables["validation"].probabilities))
    with pytest.raises(EnsembleError, match="the reference holds runs"):
        ensemble.rank_average(tables["test"].probabilities, tables["validation"].probabilities[["bert"]])


# --- which runs are read, and the clear errors ------------------------------------------


def test_unfinished_and_missing_runs_are_left_out_with_the_reason(runs_dir):
    write_run(runs_dir, "distilbert", 1.0, seed=3, finished=False)  # probabilities, no record
    runs, left_out = ensemble.load_runs(runs_dir, ["bert", "distilbert", "roberta", "electra"])
    assert [r.name for r in runs] == ["bert", "roberta"]
    assert left_out["distilbert"] == "no metrics.json (the run did not finish)"
    assert left_out["electra"].startswith("no folder") and "(not run)" in left_out["electra"]
    every, _ = ensemble.load_runs(runs_dir)  # no names: every finished run, sorted
    assert [r.name for r in every] == ["bert", "deberta", "roberta"]


def test_fewer_than_two_runs_is_a_clear_error_naming_the_folder(runs_dir, tmp_path):
    with pytest.raises(EnsembleError, match=rf"at least 2 finished detection runs in {re.escape(str(runs_dir))}, "
                                            r"found 1 \(bert\); left out: electra: no folder"):
        ensemble.load_runs(runs_dir, ["bert", "electra"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EnsembleError, match=r"found 0 \(none\)"):
        ensemble.load_runs(empty)
    with pytest.raises(EnsembleError, match="runs_dir .*nowhere does not exist"):
        ensemble.load_runs(tmp_path / "nowhere")


def swap_two_rows(table):
    order = list(range(len(table)))
    order[3], order[4] = 4, 3
    return table.iloc[order]


def replace_a_row(table):
    return table.assign(row_id=np.where(table.index == 3, 999, table["row_id"]))


def flip_a_label(table):
    return table.assign(label=np.where(table.index == 3, 1 - table["label"], table["label"]))


def drop_the_last_row(table):
    return table.iloc[:-1]


def with_cell(row, column, value):
    def change(table):
        table = table.astype({column: object})
        table.loc[row, column] = value
        return table
    return change


@pytest.mark.parametrize("split", ["test", "validation"])
@pytest.mark.parametrize("change, message", [
    (swap_two_rows, r"runs 'bert' and 'roberta' hold the same essays in a different order in the {split} "
                    r"split: row 3 is row_id {a} in 'bert' but row_id {b} in 'roberta'"),
    (replace_a_row, r"runs 'bert' and 'roberta' hold different essays in the {split} split: "
                    r"row 3 is row_id {a} in 'bert' but row_id 999 in 'roberta'"),
    (flip_a_label, r"runs 'bert' and 'roberta' give row_id {a} of the {split} split \(row 3\) different labels"),
    (drop_the_last_row,
     r"runs 'bert' and 'roberta' hold different essays in the {split} split: {n} vs {m} rows; "
     r"row {m} \(row_id {last}\) is only in 'bert'"),
])
def test_misaligned_runs_are_a_clear_error(runs_dir, split, change, message):
    ids = VALIDATION_IDS if split == "validation" else TEST_IDS
    edit_file(ensemble.probability_file(runs_dir / "roberta", split), change)
    runs, _ = ensemble.load_runs(runs_dir, ["bert", "roberta", "deberta"])
    expected = message.format(split=split, a=ids[3], b=ids[4], n=len(ids), m=len(ids) - 1, last=ids[-1])
    with pytest.raises(EnsembleError, match=expected):
        ensemble.aligned_scores(runs)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns="prob_generated"), r"missing column\(s\) \['prob_generated'\]"),
    (with_cell(0, "label", 2), r"label must be 0 or 1, row_id 100 has 2"),
    (with_cell(0, "prob_generated", 1.5), r"prob_generated must be a probability in \[0, 1\], row_id 100 has 1.5"),
    (with_cell(0, "prob_generated", "high"), r"prob_generated must be a probability in \[0, 1\], row_id 100 has high"),
    (with_cell(1, "row_id", 100), "row_id 100 appears more than once"),
])
def test_malformed_probability_file_is_named(runs_dir, change, message):
    path = ensemble.probability_file(runs_dir / "bert", "test")
    edit_file(path, change)
    with pytest.raises(EnsembleError, match=message) as err:
        ensemble.load_runs(runs_dir)
    assert str(path) in str(err.value)


def test_default_runs_dir_is_the_detection_folder_beside_this_run(tmp_path):
    assert ensemble.default_runs_dir(tmp_path / "smoke/detect_ensemble", "detect_ensemble") == \
        tmp_path / "smoke/detect_ai_text"
    assert ensemble.default_runs_dir(tmp_path / "full/detect_ensemble/big", "detect_ensemble/big") == \
        tmp_path / "full/detect_ai_text"
    with pytest.raises(EnsembleError, match="does not end with the project name 'detect_ensemble'.*set runs_dir"):
        ensemble.default_runs_dir(tmp_path / "elsewhere", "detect_ensemble")


def test_runs_folder_is_runs_dir_where_set_else_the_detection_folder_beside_this_run(tmp_path):
    from nbutils.run import environment, setup

    final = tmp_path / "smoke" / "detect_ensemble"
    run = setup.Run(project="detect_ensemble", dir=setup.attempt_folder(final),
                    env=environment.Environment("local", tmp_path), final=final)
    assert ensemble.runs_folder(run) == tmp_path / "smoke" / "detect_ai_text"
    assert ensemble.runs_folder(run, str(tmp_path / "mine")) == tmp_path / "mine"


# --- the project: ordered after the detection runs, and its smoke run ---------------------


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_run_all_orders_the_ensemble_after_every_detection_run(profile):
    ordered = [p.name for p in runner.order(runner.discover(ROOT, profile))]
    detection = [i for i, name in enumerate(ordered) if name.startswith("detect_ai_text/")]
    assert detection and ordered.index("detect_ensemble") > max(detection)
    project = next(p for p in runner.discover(ROOT, profile) if p.name == "detect_ensemble")
    assert project.needs == ["detect_ai_text"]


@pytest.fixture(scope="module")
def ensemble_run(smoke_run):
    """The session's smoke run of the ensemble: after the session's detection smoke runs, into
    the same outputs folder (conftest's smoke_run follows the notebook's needs), so its default
    runs_dir (empty) must find them beside it."""
    code, smoke = smoke_run("detect_ensemble")  # (exit code, <outputs>/smoke)
    executed = nbformat.read(smoke / "detect_ensemble" / "detect_ensemble.ipynb", as_version=4)
    error = next((o.get("evalue", "") for c in executed.cells for o in c.get("outputs", [])
                  if o.get("output_type") == "error"), "")
    return smoke, SimpleNamespace(status="ok" if code == 0 else "failed", error=error,
                                  seconds=executed.metadata.papermill.duration)


BACKBONES = ["deberta", "roberta", "bert", "distilbert"]


def test_smoke_run_records_every_method(ensemble_run):
    smoke, result = ensemble_run
    assert result.status == "ok", result.error
    assert result.seconds < 60
    rec = record.read_record(smoke / "detect_ensemble")
    assert tuple(rec) == record.RECORD_FIELDS
    assert rec["task"] == "ai-text-detection-ensemble" and rec["primary_metric"] == "roc_auc"
    methods = rec["metrics"]["methods"]
    assert list(methods) == BACKBONES + [ensemble.MEAN, ensemble.RANK, ensemble.STACK]
    for name, m in methods.items():
        assert {"roc_auc", "accuracy", "threshold", "validation_roc_auc", "validation_accuracy"} <= set(m), name
        assert 0 <= m["roc_auc"] <= 1 and 0 <= m["accuracy"] <= 1
    assert rec["metrics"]["roc_auc"] == methods[ensemble.STACK]["roc_auc"]
    best = rec["metrics"]["best_single"]
    assert best in BACKBONES and rec["baselines"]["best_single_model"]["run"] == best
    assert methods[best]["validation_roc_auc"] == max(methods[b]["validation_roc_auc"] for b in BACKBONES)
    # The ensembles of these tiny detectors are at least as good as chance by far.
    assert methods[ensemble.STACK]["roc_auc"] >= 0.85
    # Every method's test ROC AUC with its interval; the headline's in metrics.intervals, and the
    # split of every published result (thresholds and choices are not results).
    for name, m in methods.items():
        assert m["intervals"]["roc_auc"]["low"] <= m["roc_auc"] <= m["intervals"]["roc_auc"]["high"], name
    assert rec["metrics"]["intervals"] == methods[ensemble.STACK]["intervals"]
    assert set(rec["metrics"]["measured_on"]) == set(ensemble.METRIC_NAMES)
    assert all(v.startswith("test") for v in rec["metrics"]["measured_on"].values())
    # Paired: the three ensembles against the best single model, then the six pairs of backbones.
    paired = rec["metrics"]["paired"]
    assert [(r["a"], r["b"]) for r in paired[:3]] == [(m, best) for m in ensemble.METHODS]
    assert len(paired) == 3 + 6 and all(r["kind"] == "backbones" for r in paired[3:])
    for r in paired:
        assert r["within_noise"] == (r["low"] <= 0 <= r["high"])


def test_smoke_run_read_the_session_detection_runs(ensemble_run):
    smoke, _ = ensemble_run
    rec = record.read_record(smoke / "detect_ensemble")
    runs, _ = ensemble.load_runs(smoke / "detect_ai_text", BACKBONES)
    assert rec["data"]["fingerprint"] == ensemble.fingerprint(runs)
    for run in runs:
        # Each model alone scores exactly what its own run recorded: the right files and columns.
        assert rec["metrics"]["methods"][run.name]["roc_auc"] == pytest.approx(run.record["metrics"]["roc_auc"], abs=1e-12)
        assert rec["data"]["runs"][run.name]["project"] == f"detect_ai_text/{run.name}"
    detection = runs[0].record["data"]
    assert rec["data"]["validation"] == detection["validation"] and rec["data"]["test"] == detection["test"]
    stacker = rec["metrics"]["stacker"]
    assert stacker["fitted_on"] == "validation" and stacker["rows"] == detection["validation"]
    assert set(stacker["coefficients"]) == set(BACKBONES)
    table = pd.read_csv(smoke / "detect_ensemble" / "results.csv", index_col="method")
    assert list(table.index) == list(rec["metrics"]["methods"])
    assert (table["roc_auc_low"] <= table["roc_auc"]).all() and (table["roc_auc"] <= table["roc_auc_high"]).all()
    assert len(pd.read_csv(smoke / "detect_ensemble" / "paired_differences.csv")) == len(rec["metrics"]["paired"])
    assert (smoke / "detect_ensemble" / "roc_curves.png").stat().st_size > 10_000


def test_runs_that_split_differently_stop_the_notebook_with_the_reason(ensemble_run, tmp_path):
    """distilbert_cv trains on a 300-essay subset: its test split holds other essays."""
    smoke, _ = ensemble_run
    result = run_smoke_project("detect_ensemble", tmp_path, runs_dir=str(smoke / "detect_ai_text"),
                               runs=["bert", "distilbert_cv"])
    assert result.status == "failed"
    assert "EnsembleError" in result.error and "runs 'bert' and 'distilbert_cv' hold different essays" in result.error


# --- intervals and paired differences over the test essays (issue 27) --------------------


def add_groups(runs_dir, names, prompts=("car_free", "electoral", "venus", "face_mars")):
    """Give every run's probability files the detection notebook's optional `group` column (the
    essay's prompt): the same prompt for the same row in every run."""
    for name in names:
        for split in ensemble.SPLITS:
            edit_file(ensemble.probability_file(runs_dir / name, split),
                      lambda t: t.assign(group=[prompts[i % len(prompts)] for i in range(len(t))]))


def scored(runs_dir):
    tables, stacker, methods, results = combine(runs_dir)
    runs, _ = ensemble.load_runs(runs_dir)
    best = ensemble.best_single(results, runs)
    return tables, methods, results, runs, best


def test_the_group_column_is_read_where_present_and_optional(runs_dir):
    without, *_ = scored(runs_dir)
    assert without["test"].groups is None and without["validation"].groups is None
    add_groups(runs_dir, ["bert", "roberta", "deberta"])
    tables, *_ = scored(runs_dir)
    assert tables["test"].groups.tolist()[:5] == ["car_free", "electoral", "venus", "face_mars", "car_free"]
    assert len(tables["validation"].groups) == len(VALIDATION_IDS)
    # A run without prompts writes the column empty: read as no column, not as a missing prompt.
    for name in ("bert", "roberta", "deberta"):
        edit_file(ensemble.probability_file(runs_dir / name, "test"), lambda t: t.assign(group=""))
    assert scored(runs_dir)[0]["test"].groups is None
    edit_file(ensemble.probability_file(runs_dir / "bert", "test"), with_cell(2, "group", "venus"))
    with pytest.raises(EnsembleError, match="the group column is empty for row_id 100"):
        ensemble.load_runs(runs_dir)
    add_groups(runs_dir, ["bert", "roberta", "deberta"])
    # One run without it (an older detection run) still combines: the prompts come from the others.
    edit_file(ensemble.probability_file(runs_dir / "bert", "test"), lambda t: t.drop(columns="group"))
    assert scored(runs_dir)[0]["test"].groups.tolist() == tables["test"].groups.tolist()


def test_runs_that_disagree_on_an_essays_prompt_are_refused(runs_dir):
    add_groups(runs_dir, ["bert", "roberta", "deberta"])
    edit_file(ensemble.probability_file(runs_dir / "roberta", "test"), with_cell(3, "group", "other"))
    runs, _ = ensemble.load_runs(runs_dir)
    with pytest.raises(EnsembleError, match=r"runs 'bert' and 'roberta' give row_id 103 of the test split "
                                            r"\(row 3\) different groups: 'face_mars' vs 'other'"):
        ensemble.aligned_scores(runs)


@pytest.mark.parametrize("grouped", [False, True])
def test_every_method_gets_a_stratified_roc_auc_interval(runs_dir, grouped):
    from nbutils import metrics

    if grouped:
        add_groups(runs_dir, ["bert", "roberta", "deberta"])
    tables, methods, results, runs, best = scored(runs_dir)
    intervals = ensemble.test_intervals(methods, tables, results, resamples=200)
    assert list(intervals) == list(methods)
    test = tables["test"]
    for name, interval in intervals.items():
        auc = interval["roc_auc"]
        assert auc["low"] <= results[name]["roc_auc"] <= auc["high"] and auc["resamples"] == 200
        assert auc["high"] - auc["low"] > 0.01  # 60 test essays cannot pin ROC AUC down
        assert interval["accuracy"]["low"] <= results[name]["accuracy"] <= interval["accuracy"]["high"]
        # Stratified as the conventions say: by label, and by prompt where there are prompts.
        expected = metrics.classification_intervals(test.labels, methods[name]["test"], results[name]["threshold"],
                                                    groups=test.groups if grouped else None, resamples=200)
        assert interval == expected
    if grouped:  # the prompts change the strata, hence the interval
        plain = metrics.classification_intervals(test.labels, methods[ensemble.STACK]["test"],
                                                 results[ensemble.STACK]["threshold"], resamples=200)
        assert plain != intervals[ensemble.STACK]


@pytest.mark.parametrize("grouped", [False, True])
def test_paired_table_compares_the_ensembles_with_the_best_member_and_every_backbone_pair(runs_dir, grouped):
    from nbutils import metrics

    if grouped:
        add_groups(runs_dir, ["bert", "roberta", "deberta"])
    tables, methods, results, runs, best = scored(runs_dir)
    paired = ensemble.paired_comparisons(methods, tables, runs, best, resamples=200)
    pairs = [(r["a"], r["b"], r["kind"]) for r in paired]
    assert best == "roberta"  # the strongest synthetic run, chosen on validation
    assert pairs == [(ensemble.MEAN, "roberta", "ensemble vs best single"),
                     (ensemble.RANK, "roberta", "ensemble vs best single"),
                     (ensemble.STACK, "roberta", "ensemble vs best single"),
                     ("bert", "deberta", "backbones"), ("bert", "roberta", "backbones"),
                     ("deberta", "roberta", "backbones")]
    test = tables["test"]
    for r in paired:
        expected = metrics.paired_roc_auc(test.labels, methods[r["a"]]["test"], methods[r["b"]]["test"],
                                          groups=test.groups if grouped else None, resamples=200)
        assert {k: r[k] for k in expected} == expected
        assert r["difference"] == pytest.approx(results[r["a"]]["roc_auc"] - results[r["b"]]["roc_auc"])
        assert r["within_noise"] == (r["low"] <= 0 <= r["high"])
        assert r["conclusion"] == metrics.describe_difference(r["a"], r["b"], r, "ROC AUC")
    table = ensemble.paired_table(paired)
    assert len(table) == 6 and list(table["within noise"]) == [r["within_noise"] for r in paired]


def test_conclusion_claims_no_winner_the_interval_does_not_support(runs_dir):
    tables, methods, results, runs, best = scored(runs_dir)
    intervals = ensemble.test_intervals(methods, tables, results, resamples=200)
    paired = ensemble.paired_comparisons(methods, tables, runs, best, resamples=200)
    text = ensemble.conclusion(results, intervals, paired, best, grouped=False)
    for r in paired:
        assert f"- {r['conclusion']}." in text
        if r["within_noise"]:
            assert f"{r['a']} vs {r['b']}: ROC AUC difference" in text and "within noise" in r["conclusion"]
            assert f"{r['a']} beats" not in r["conclusion"] and f"{r['b']} beats" not in r["conclusion"]
    assert any(r["within_noise"] for r in paired) and any(not r["within_noise"] for r in paired)
    assert f"- {ensemble.STACK}: {ensemble.format_interval(results[ensemble.STACK]['roc_auc'], intervals[ensemble.STACK]['roc_auc'])}" in text
    assert "redrawn within each label:" in text
    assert "redrawn within each label and prompt" in ensemble.conclusion(results, intervals, paired, best, grouped=True)
    # Two identical runs are never told apart: their difference is 0 on every resample.
    same = ensemble.paired_comparisons({"a": methods["bert"], "b": methods["bert"]}, tables,
                                       [SimpleNamespace(name="a"), SimpleNamespace(name="b")], "a", resamples=50)
    assert same[0]["within_noise"] and "within noise" in same[0]["conclusion"]


def test_record_holds_the_intervals_the_split_and_the_paired_results(runs_dir, tmp_path):
    from nbutils.run import environment, setup

    add_groups(runs_dir, ["bert", "roberta", "deberta"])
    tables, stacker, methods, results = combine(runs_dir)
    runs, left_out = ensemble.load_runs(runs_dir)
    best = ensemble.best_single(results, runs)
    intervals = ensemble.test_intervals(methods, tables, results, resamples=100)
    paired = ensemble.paired_comparisons(methods, tables, runs, best, resamples=100)
    final = tmp_path / "smoke" / "detect_ensemble"
    run = setup.Run(project="detect_ensemble", dir=setup.attempt_folder(final),
                    env=environment.Environment("local", tmp_path), final=final,
                    config={"project": "detect_ensemble", "profile": "smoke", "seed": 42})
    run.dir.mkdir(parents=True)
    rec = ensemble.write_record(run, runs_dir, runs, left_out, tables, results, best, stacker.summary(), 0.1,
                                intervals, paired)
    m = rec["metrics"]
    assert m["intervals"] == intervals[ensemble.STACK]
    # The prompt column says which prompt an essay has, not that the runs split by prompt: the
    # split is named as the runs' records name it, and plainly "test" where they do not.
    assert m["measured_on"] == {k: "test" for k in ensemble.METRIC_NAMES}
    for r in runs:
        r.record["metrics"]["measured_on"] = {"roc_auc": "test (prompts unseen in training)"}
    by_prompt = ensemble.write_record(run, runs_dir, runs, left_out, tables, results, best, stacker.summary(), 0.1,
                                      intervals, paired)
    assert by_prompt["metrics"]["measured_on"] == {k: "test (prompts unseen in training)" for k in ensemble.METRIC_NAMES}
    assert m["paired"] == paired
    assert all(m["methods"][n]["intervals"] == intervals[n] for n in methods)
    assert rec["baselines"]["best_single_model"]["intervals"] == intervals[best]
    assert "threshold" not in m["measured_on"]


def test_smoke_conclusion_is_written_from_the_paired_intervals(ensemble_run):
    smoke, _ = ensemble_run
    rec = record.read_record(smoke / "detect_ensemble")
    executed = nbformat.read(smoke / "detect_ensemble" / "detect_ensemble.ipynb", as_version=4)
    text = next(o["data"]["text/markdown"] for c in executed.cells if c.cell_type == "code"
                for o in c.get("outputs", []) if "text/markdown" in o.get("data", {}))
    for r in rec["metrics"]["paired"]:
        assert f"- {r['conclusion']}." in text
        assert ("within noise" in r["conclusion"]) == r["within_noise"]
