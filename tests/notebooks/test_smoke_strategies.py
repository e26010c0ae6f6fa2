"""End to end: the fine-tuning strategies study on its smoke profile, through papermill, offline.

The tiny backbone is a BERT the fixtures briefly pre-trained with masked-LM on the project's
general text (`tests.fixtures.tiny_pretraining`): the random tiny models' MLM heads predict at chance,
so forgetting measured through them would be noise.
"""

import json
import math

import nbformat
import pandas as pd
import pytest

from conftest import interrupt_smoke_run, run_smoke_project
from nbutils.run import checkpoints, record
from nbutils.tasks.strategies import study

PROJECT = "finetuning_strategies"
STRATEGIES = ["full", "full_high_lr", "frozen", "gradual", "lora"]


@pytest.fixture(scope="module")
def run(smoke_run):
    code, folder = smoke_run(PROJECT)
    assert code == 0, f"the smoke run failed: see {folder / PROJECT / (PROJECT + '.ipynb')}"
    return folder / PROJECT


@pytest.fixture(scope="module")
def rec(run):
    return record.read_record(run)


def test_record_holds_every_strategy(rec):
    assert tuple(rec) == record.RECORD_FIELDS and rec["project"] == PROJECT
    strategies = rec["metrics"]["strategies"]
    assert list(strategies) == STRATEGIES
    best = rec["metrics"]["best_strategy"]
    assert rec["metrics"]["roc_auc"] == strategies[best]["test"]["roc_auc"]
    for name, s in strategies.items():
        assert set(s["test"]) == set(s["validation"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}
        assert s["forgetting"]["mlm_loss_before"] == rec["metrics"]["forgetting_before"]["loss"]
        # 4 epochs of ceil(rows / 16) steps, evaluated twice an epoch (every steps // 2) and at the last
        steps = math.ceil(rec["data"]["train"] / 16)
        total, every = 4 * steps, steps // 2
        assert len(s["history"]) == s["overfitting"]["evaluations"] == total // every + bool(total % every)
        assert all({"train_loss", "validation_loss", "gap", "running_train_loss"} <= set(h) for h in s["history"])
        assert 0 < s["parameters"]["trainable"] <= s["parameters"]["total"]
    assert strategies["lora"]["parameters"]["trainable"] < 0.1 * strategies["lora"]["parameters"]["total"]
    assert strategies["frozen"]["parameters"]["trainable"] < 0.5 * strategies["full"]["parameters"]["trainable"]
    rates = strategies["gradual"]["learning_rates"]  # ULMFiT's factor between neighbouring groups
    assert rates["head"] == pytest.approx(2.6 * rates["encoder.layer.1"])
    assert rates["head"] == pytest.approx(2.6 ** 3 * rates["embeddings"])
    assert rec["metrics"]["mlm_head_informative"] is True
    general = rec["data"]["general_text"]
    assert general["passages"] == 132 and general["masked_tokens"] > 500 and general["fingerprint"].startswith("sha256:")


def test_the_best_strategy_is_chosen_on_validation_and_scored_on_other_rows(run, rec):
    """The study's choice is made on validation scores (mean over the seeds), on a split by
    prompt, and reported on the test split: other rows, of other prompts, named by their hashes."""
    m, data = rec["metrics"], rec["data"]
    strategies = m["strategies"]
    assert m["best_chosen_on"] == "validation" and m["seeds"] == [42, 43]
    assert m["best_strategy"] == max(strategies, key=lambda n: (strategies[n]["validation"]["roc_auc"],
                                                                -STRATEGIES.index(n)))
    for s in strategies.values():
        assert s["seeds"] == [42, 43] and len(s["seed_values"]["validation"]["roc_auc"]) == 2
        assert s["validation"]["roc_auc"] == pytest.approx(sum(s["seed_values"]["validation"]["roc_auc"]) / 2)
        assert s["spread"]["test"]["roc_auc"] >= 0
    assert data["group_column"] == "prompt_name" and len(set(data["split_hashes"].values())) == 3
    test_rows = pd.read_csv(run / "test_probabilities.csv")
    assert record.split_hash(test_rows) == data["split_hashes"]["test"]
    assert data["overlap"]["train"]["removed"] == 0


def test_it_learns(rec):
    """The tiny pre-trained BERT learns the task under full fine-tuning."""
    assert rec["metrics"]["strategies"]["full"]["test"]["roc_auc"] >= 0.85


def test_training_hard_forgets_more_than_freezing_the_lower_layers(rec):
    """The issue's claim, measured: at a high learning rate with every layer training, the
    backbone's masked-LM loss on held-out general text rises far more than with the lower layers
    frozen (same data, same steps). Also more than full fine-tuning at the normal rate: the
    learning rate, not just which layers train, drives forgetting."""
    s = rec["metrics"]["strategies"]
    forgot = {name: s[name]["forgetting"]["forgetting"] for name in s}
    assert forgot["full_high_lr"] > 2 * forgot["frozen"] > 0
    assert forgot["full_high_lr"] > 2 * forgot["full"]
    assert forgot["frozen"] < forgot["full"]


def test_data_size_curve_covers_two_strategies_at_three_sizes(rec):
    """One seed per point: the full-size point is the first seed's run."""
    curve = rec["metrics"]["data_size_curve"]
    train = rec["data"]["train"]
    assert set(curve) == {"full", "lora"}
    for name, points in curve.items():
        assert sorted(map(int, points)) == [round(0.25 * train), round(0.5 * train), train]
        assert points[str(train)] == rec["metrics"]["strategies"][name]["seed_values"]["test"]["roc_auc"][0]


def test_batching_wastes_little_on_padding(rec):
    """Per-batch padding with length grouping: 93% of the slots are real tokens in the main runs.
    The small data-size runs group fewer batches (8 to 15 an epoch), so the total sits lower."""
    by_run = rec["train"]["by_run"]
    assert len(by_run) == rec["train"]["runs"] == 2 * 5 + 4  # two seeds of five strategies, four curve runs
    for name in STRATEGIES:
        assert by_run[name]["padding_efficiency"] >= 0.9, name
    assert rec["train"]["real_tokens"] <= rec["train"]["token_slots"]
    assert rec["train"]["padding_efficiency"] >= 0.85


def test_run_leaves_probabilities_plots_and_no_checkpoints(run, rec):
    probs = pd.read_csv(run / "test_probabilities.csv")
    assert list(probs.columns) == ["row_id", "label"] + [f"prob_generated_{n}" for n in STRATEGIES]
    assert len(probs) == rec["data"]["test"] and probs["row_id"].is_unique
    for plot in ("loss_gap.png", "metric_vs_forgetting.png", "data_size_curve.png"):
        assert (run / plot).stat().st_size > 5000, plot
    assert sorted(p.name[:-len(".json")] for p in (run / "runs").glob("*.json")) == sorted(
        STRATEGIES + [f"{n}.seed43" for n in STRATEGIES] + ["full@0.25", "full@0.5", "lora@0.25", "lora@0.5"])
    assert not list((run / "checkpoints").rglob("*.safetensors")), "finished runs delete their checkpoints"


def conclusion_text(notebook) -> str:
    nb = nbformat.read(notebook, as_version=4)
    return next(o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code"
                for o in c.get("outputs", []) if "text/markdown" in o.get("data", {}))


def test_conclusion_is_written_from_the_runs_numbers(run, rec):
    text = conclusion_text(run / f"{PROJECT}.ipynb")
    s = rec["metrics"]["strategies"]
    best = rec["metrics"]["best_strategy"]
    most = max(s, key=lambda n: s[n]["forgetting"]["forgetting"])
    spread = s[best]["spread"]
    if "came first" in text:
        assert (f"**{study.DESCRIPTIONS[best]}** came first with ROC AUC {s[best]['validation']['roc_auc']:.3f} ± "
                f"{spread['validation']['roc_auc']:.3f}, and scored {s[best]['test']['roc_auc']:.3f} ± "
                f"{spread['test']['roc_auc']:.3f} on the test split") in text
    else:  # every strategy within the spread of the best
        assert "Every strategy scored about the same validation ROC AUC" in text
    assert f"most with **{study.DESCRIPTIONS[most]}** (to {s[most]['forgetting']['mlm_loss_after']:.3f}" in text
    assert "Freezing the lower layers cut forgetting" in text
    assert text == study.conclusion(s, rec["metrics"]["forgetting_before"], rec["metrics"]["data_size_curve"],
                                    rec["metrics"]["mlm_head_informative"])


def test_each_runs_threshold_is_chosen_on_validation_and_accuracy_is_measured_at_it(run, rec):
    """Not a fixed 0.5 (issue 27): each run's threshold is its most accurate cut on its validation
    scores, and its test accuracy is measured at that cut (checked on the first seed's test
    probabilities, which the run saves)."""
    probs = pd.read_csv(run / "test_probabilities.csv")
    strategies = rec["metrics"]["strategies"]
    for name, s in strategies.items():
        assert s["threshold_chosen_on"] == "validation" and len(s["thresholds"]) == 2, name
        cut = s["thresholds"][0]
        accuracy = ((probs[f"prob_generated_{name}"] >= cut).astype(int) == probs["label"]).mean()
        assert s["seed_values"]["test"]["accuracy"][0] == pytest.approx(accuracy), name
    assert any(t != 0.5 for s in strategies.values() for t in s["thresholds"])
    assert rec["metrics"]["threshold_chosen_on"] == "validation" and "threshold" not in rec["config"]


def test_every_headline_has_its_interval_and_each_strategy_is_paired_with_full(run, rec):
    m = rec["metrics"]
    for metric in ("roc_auc", "accuracy"):
        assert m["intervals"][metric]["low"] <= m[metric] <= m["intervals"][metric]["high"], metric
    assert m["measured_on"] == {"roc_auc": "test (prompts unseen in training)",
                                "accuracy": "test (prompts unseen in training)"}
    strategies = m["strategies"]
    assert m["intervals"] == {k: strategies[m["best_strategy"]]["intervals"][k] for k in ("roc_auc", "accuracy")}
    full = strategies["full"]["test"]["roc_auc"]
    assert "paired_vs_full" not in strategies["full"]
    text = conclusion_text(run / f"{PROJECT}.ipynb")
    for name, s in strategies.items():
        auc = s["intervals"]["roc_auc"]
        assert auc["low"] <= s["test"]["roc_auc"] <= auc["high"] and auc["resamples"] == 1000
        if name == "full":
            continue
        paired = s["paired_vs_full"]
        assert paired["difference"] == pytest.approx(s["test"]["roc_auc"] - full)
        assert paired["within_noise"] == (paired["low"] <= 0 <= paired["high"])
        said = f"**{study.DESCRIPTIONS[name]}** ({s['test']['roc_auc']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]) "
        verdict = ("level with it" if paired["within_noise"] else
                   "beats it" if paired["difference"] > 0 else "is beaten by it")
        assert said + verdict in text, name
    assert "not the split" in text


def test_the_cost_is_printed_before_training(run):
    """5 strategies x 2 seeds, and the curve's 2 strategies at 2 sizes below the whole split."""
    executed = (run / f"{PROJECT}.ipynb").read_text()
    assert "cost: 14 training runs (10 = 5 strategies x 2 seeds, and 4 for the data-size curve)" in executed
    assert executed.index("cost: 14 training runs") < executed.index("full seed 42: validation ROC AUC")


# The killed-and-resumed study trains two strategies, one seed, no extra data-size runs: a quarter
# of the smoke study's trainings. Each strategy's run starts from the same seed whatever ran
# before it, so its results are the session run's results for that strategy and seed.
RESUMED_STUDY = {"strategies": ["full", "full_high_lr"], "seeds": 1,
                 "data_size_strategies": ["full"], "data_sizes": [1.0]}


def test_killed_study_resumes_and_finishes_with_the_uninterrupted_metrics(run, rec, tmp_path):
    """SIGKILL the study in the middle of its second strategy (step 40, mid-way through its second
    epoch: the smoke profile saves every 20 steps), then run it again: the first strategy's
    results are read back, the second continues from its checkpoint (weights, optimizer,
    scheduler, RNG, the epoch's batch order), and both strategies' numbers match the
    uninterrupted session run's. A fresh process landing on the session run's numbers is also
    the study's determinism check."""
    run_dir = tmp_path / "smoke" / PROJECT  # where a finished run is published
    work = run_dir.with_name(run_dir.name + ".incomplete")  # where it works until then
    second = work / "checkpoints" / "full_high_lr"

    def mid_second_strategy():
        return ((work / "runs" / "full.json").is_file()
                and any(c.name == "checkpoint-40" for c in checkpoints.complete_checkpoints(second)))

    interrupt_smoke_run(PROJECT, tmp_path, mid_second_strategy, "the second strategy's checkpoint-40",
                        poll=0.05, overrides=RESUMED_STUDY)
    assert not (work / "runs" / "full_high_lr.json").exists() and not run_dir.exists(), "killed too late"
    interrupted_at = checkpoints.complete_checkpoints(second)[-1]
    state = json.loads((interrupted_at / "trainer_state.json").read_text())
    assert state["global_step"] < state["max_steps"] and state["epoch"] % 1 != 0  # mid-epoch

    resumed = run_smoke_project(PROJECT, tmp_path, **RESUMED_STUDY)
    assert resumed.status == "ok", resumed.error
    executed = (run_dir / f"{PROJECT}.ipynb").read_text()
    assert "full: finished in an earlier session" in executed
    assert "resuming from" in executed and f"full_high_lr/{interrupted_at.name}" in executed
    assert list(resumed.record["metrics"]["strategies"]) == RESUMED_STUDY["strategies"]
    for name in RESUMED_STUDY["strategies"]:
        # Everything a strategy's run measured; not its settings (the study's list of strategies
        # is in them) nor its timings.
        got, expected = (flat({k: v for k, v in json.loads((folder / "runs" / f"{name}.json").read_text()).items()
                               if k not in ("settings", "train")}) for folder in (run_dir, run))
        assert got.keys() == expected.keys(), name
        for key, value in expected.items():
            assert got[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), f"{name}{key}"
    before, expected_before = flat(resumed.record["metrics"]["forgetting_before"]), flat(rec["metrics"]["forgetting_before"])
    assert before == pytest.approx(expected_before, abs=1e-6)
    assert resumed.record["data"]["fingerprint"] == rec["data"]["fingerprint"]


def flat(value, prefix=""):
    """Nested dicts and lists as one {path: leaf} dict (pytest.approx does not nest)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    out = {}
    for key, item in items:
        out.update(flat(item, f"{prefix}/{key}"))
    return out


@pytest.mark.slow
def test_an_unknown_strategy_stops_the_run_early_with_the_valid_names(tmp_path):
    result = run_smoke_project(PROJECT, tmp_path, strategies=["full", "freeze"])
    assert result.status == "failed"
    assert "strategies: unknown strategy 'freeze'; known: full, full_high_lr, frozen, gradual, lora" in result.error
    assert not (tmp_path / "smoke" / PROJECT / "runs").exists(), "it stopped before training anything"
