"""The strategies study's helpers: the plan and its checks, loss curves and the overfitting
verdict, resumable results, subsampling, and a conclusion that follows the numbers."""

import pytest
from datasets import Dataset

from nbutils import layers
from nbutils.tasks.strategies import study
from nbutils.optim import LayerGroupTrainer
from nbutils.unfreezing import GradualUnfreezing

RATES = dict(learning_rate=2e-5, high_learning_rate=1e-4, lora_learning_rate=5e-4, freeze_to=7)


# --- the plan


def test_plan_keeps_the_order_and_the_settings():
    plan = study.plan(["lora", "full", "frozen", "full_high_lr", "gradual"], lr_decay=0.9, **RATES)
    assert list(plan) == ["lora", "full", "frozen", "full_high_lr", "gradual"]
    assert plan["full_high_lr"].learning_rate == 1e-4 and plan["full"].learning_rate == 2e-5
    assert plan["lora"].lora and plan["lora"].learning_rate == 5e-4
    assert plan["frozen"].freeze_to == 7 and not plan["full"].freeze_to
    assert plan["gradual"].gradual and plan["gradual"].lr_decay == 0.9


@pytest.mark.parametrize("names, message", [
    (["full", "ful"], "strategies: unknown strategy 'ful'; known: full, full_high_lr, frozen, gradual, lora"),
    ([], "strategies must be a non-empty list"),
    (["full", "full"], "strategies names full more than once"),
    ("full", "strategies must be a non-empty list"),
])
def test_bad_strategy_names_are_named(names, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        study.plan(names, **RATES)


def test_a_high_learning_rate_must_be_higher():
    with pytest.raises(ValueError, match=r"high_learning_rate \(2e-05\) must be above learning_rate"):
        study.plan(["full_high_lr"], **{**RATES, "high_learning_rate": 2e-5})
    study.plan(["full"], **{**RATES, "high_learning_rate": 2e-5})  # irrelevant without full_high_lr


def test_frozen_needs_layers_to_freeze():
    with pytest.raises(ValueError, match="freeze_to must be a non-zero whole number for the frozen strategy"):
        study.plan(["frozen"], **{**RATES, "freeze_to": 0})


def test_prepare_model_freezes_or_adds_lora(cache):
    from nbutils import lora
    from training_helpers import tiny_classifier

    plan = study.plan(["full", "frozen", "lora", "gradual"], **{**RATES, "freeze_to": 2})
    frozen = study.prepare_model(plan["frozen"], tiny_classifier(cache, "bert"))
    groups = layers.layer_groups(frozen)
    assert [all(p.requires_grad for _, p in g.parameters) for g in groups] == [False, False, True, True]
    config = lora.classification_lora_config(4, 8, 0.0, ["query", "value"])
    adapted = study.prepare_model(plan["lora"], tiny_classifier(cache, "bert"), config)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    for name in ("full", "gradual"):  # gradual freezes when training starts, not here
        model = study.prepare_model(plan[name], tiny_classifier(cache, "bert"))
        assert all(p.requires_grad for p in model.parameters())
    trainer_class, options, callbacks = study.trainer_setup(plan["gradual"], 1, 5)
    assert trainer_class is LayerGroupTrainer and options["lr_factor"] == 2.6
    assert isinstance(callbacks[0], GradualUnfreezing) and callbacks[0].every_steps == 5


def test_unfreezing_pace_and_step_count():
    # 479 rows in batches of 16: 30 batches an epoch; 4 epochs: 120 steps
    assert study.optimizer_steps(479, 16, 1, 4) == 120
    assert study.optimizer_steps(479, 16, 4, 1) == 7 and study.optimizer_steps(479, 16, 1, 0.5) == 15
    assert study.unfreeze_pace(120, 4) == 20  # all four groups train from step 60 on
    assert study.unfreeze_pace(1000, 14) == 38 and study.unfreeze_pace(3, 14) == 1


# --- loss curves and overfitting


def log(*points):
    """A Trainer log: running training losses and evaluations of the two eval sets."""
    history = []
    for step, running, train, validation in points:
        history.append({"loss": running, "step": step, "epoch": step / 10})
        history.append({"eval_train_loss": train, "step": step, "epoch": step / 10})
        history.append({"eval_validation_loss": validation, "step": step, "epoch": step / 10})
    return history


def test_loss_history_pairs_the_two_evaluations_at_each_step():
    rows = study.loss_history(log((10, 0.7, 0.6, 0.65), (20, 0.5, 0.4, 0.5)))
    assert [(r["step"], r["train_loss"], r["validation_loss"], r["running_train_loss"]) for r in rows] == [
        (10, 0.6, 0.65, 0.7), (20, 0.4, 0.5, 0.5)]
    assert rows[1]["gap"] == pytest.approx(0.1)


def test_overfitting_is_a_rising_validation_loss_while_the_training_loss_falls():
    overfit = study.overfitting(study.loss_history(log((10, .7, .6, .6), (20, .5, .4, .5), (30, .3, .2, .7))))
    assert overfit["overfit"] and overfit["best_step"] == 20
    assert overfit["validation_rise"] == pytest.approx(0.4) and overfit["final_gap"] == pytest.approx(0.5)
    assert overfit["gap_growth"] == pytest.approx(0.5)
    steady = study.overfitting(study.loss_history(log((10, .7, .6, .6), (20, .5, .4, .5), (30, .3, .3, .51))))
    assert not steady["overfit"]  # 2% above its best: within the tolerance
    diverged = study.overfitting(study.loss_history(log((10, .7, .6, .6), (20, .5, .4, .5), (30, .9, .9, .9))))
    assert not diverged["overfit"]  # both losses rose: that is instability, not overfitting
    assert study.overfitting([])["overfit"] is None


# --- resumable results


def test_saved_results_are_read_back_only_with_the_same_settings(tmp_path):
    settings = {"run": "full", "config": {"learning_rate": 2e-5, "strategies": ["full"]}}
    study.save_result(tmp_path, "full", {"settings": settings, "test": {"roc_auc": 0.9}})
    assert study.saved_result(tmp_path, "full", settings)["test"]["roc_auc"] == 0.9
    assert study.saved_result(tmp_path, "full", {**settings, "config": {"learning_rate": 3e-5}}) is None
    assert study.saved_result(tmp_path, "lora", settings) is None
    assert not list(tmp_path.glob("*.tmp"))


# --- data sizes


def test_subsample_is_stratified_seeded_and_checked():
    rows = Dataset.from_dict({"labels": [0] * 60 + [1] * 40, "i": list(range(100))})
    quarter = study.subsample(rows, 0.25, seed=1)
    assert len(quarter) == 25 and sum(quarter["labels"]) == 10
    assert list(quarter["i"]) == sorted(quarter["i"])
    assert list(study.subsample(rows, 0.25, seed=1)["i"]) == list(quarter["i"])
    assert study.subsample(rows, 1.0, seed=1) is rows
    with pytest.raises(ValueError, match=r"data_sizes: each size is a fraction of the training split in \(0, 1\]"):
        study.subsample(rows, 25, seed=1)
    with pytest.raises(ValueError, match="data_sizes: 0.02 of 100 training rows is 2 rows, too few"):
        study.subsample(rows, 0.02, seed=1)
    assert study.check_fractions([1.0, 0.1, 0.3]) == [0.1, 0.3, 1.0]
    with pytest.raises(ValueError, match="data_sizes names a size more than once"):
        study.check_fractions([0.5, 0.5])


def test_combined_train_summary():
    a = {"runtime_s": 10, "samples_per_s": 100, "epochs": 3.0, "processes": 1, "real_tokens": 900, "token_slots": 1000}
    b = {"runtime_s": 30, "samples_per_s": 20, "epochs": 3.0, "processes": 1, "real_tokens": 100, "token_slots": 200}
    total = study.combined_train_summary([a, b])
    assert total["runtime_s"] == 40 and total["samples_per_s"] == pytest.approx(1600 / 40)
    assert total["padding_efficiency"] == pytest.approx(1000 / 1200, abs=1e-4) and total["runs"] == 2


# --- the conclusion follows the numbers


def result(name, auc, forgot, gap=0.1, rise=0.0, overfit=False, trainable=100, lr=2e-5, val=None):
    """One strategy's results; its validation ROC AUC is the test one unless `val` says otherwise."""
    val = auc if val is None else val
    return {"description": study.DESCRIPTIONS[name], "learning_rate": lr, "test": {"roc_auc": auc, "accuracy": auc - 0.1},
            "validation": {"roc_auc": val, "accuracy": val - 0.1},
            "forgetting": {"forgetting": forgot, "mlm_loss_before": 2.0, "mlm_loss_after": 2.0 + forgot},
            "overfitting": {"final_gap": gap, "validation_rise": rise, "overfit": overfit, "tolerance": 0.05},
            "parameters": {"trainable": trainable, "total": 100}, "train": {"runtime_s": 1.0}}


def results(**changes):
    made = {"full": result("full", 0.95, 0.5), "full_high_lr": result("full_high_lr", 0.90, 5.0, lr=1e-4),
            "frozen": result("frozen", 0.81, 0.2, trainable=20), "gradual": result("gradual", 0.78, 0.08),
            "lora": result("lora", 0.80, 2.0, trainable=3)}
    for name, fields in changes.items():
        made[name] = result(name, **fields)
    return made


def test_conclusion_names_the_best_and_the_most_forgetful_strategy():
    text = study.conclusion(results(), {"loss": 2.0}, {"full": {120: 0.75, 479: 0.95}, "lora": {120: 0.71, 479: 0.8}})
    assert ("Ranked on the validation split (one seed), **full fine-tuning** came first with ROC AUC 0.950, "
            "and scored 0.950 on the test split") in text
    assert "**gradual unfreezing + discriminative learning rates** came last, 0.780 (0.780 on test)" in text
    assert "most with **full fine-tuning, high learning rate** (to 7.000, +5.000)" in text
    assert "least with **gradual unfreezing + discriminative learning rates**" in text
    assert "Freezing the lower layers cut forgetting: +0.200 against +0.500" in text
    assert "It trained 3.00% of the parameters" in text
    assert "went from 0.750 with 120 training rows to 0.950 with 479" in text
    assert "With the fewest rows, **full fine-tuning** led by 0.040." in text
    assert "Caveat" not in text


def test_conclusion_changes_with_the_numbers():
    swapped = results(frozen={"auc": 0.97, "forgot": 6.0}, full_high_lr={"auc": 0.9, "forgot": 0.1, "lr": 1e-4})
    text = study.conclusion(swapped, {"loss": 2.0}, informative_head=False)
    assert "**lower layers frozen** came first with ROC AUC 0.970" in text
    assert "most with **lower layers frozen**" in text
    assert "Freezing the lower layers did not cut forgetting" in text
    assert "Caveat" in text


def test_conclusion_says_whether_the_high_learning_rate_overfit():
    overfit = results(full_high_lr={"auc": 0.9, "forgot": 5.0, "gap": 0.4, "rise": 0.3, "overfit": True, "lr": 1e-4})
    assert "Its validation loss ended 30% above its lowest point while the training loss kept falling: it **overfit**." \
        in study.conclusion(overfit, {"loss": 2.0})
    assert "Its validation loss ended within 5% of its lowest point: no sign of overfitting." \
        in study.conclusion(results(), {"loss": 2.0})
    level = results(**{n: {"auc": 0.9, "forgot": 1.0} for n in ("full", "frozen", "gradual", "lora")},
                    full_high_lr={"auc": 0.901, "forgot": 1.0, "lr": 1e-4})
    assert ("Every strategy scored about the same validation ROC AUC (0.900 to 0.901, one seed)"
            in study.conclusion(level, {"loss": 2.0}))


def test_what_each_strategy_trains_in_words():
    plan = study.plan(list(study.STRATEGY_NAMES), **{**RATES, "freeze_to": -5})
    assert [plan[n].what_trains(14) for n in study.STRATEGY_NAMES] == [
        "all 14 layer groups", "all 14 layer groups", "the top 5 of 14 layer groups",
        "the head, then one more of the 14 layer groups at a time, downwards", "LoRA adapters and the head"]
    assert study.plan(["frozen"], **RATES)["frozen"].what_trains(14) == "the top 7 of 14 layer groups"


def test_results_table_has_one_numeric_row_per_strategy():
    table = study.results_table(results())
    assert list(table.index) == ["full", "full_high_lr", "frozen", "gradual", "lora"]
    assert table.loc["frozen", "test ROC AUC"] == 0.81 and table.loc["lora", "trainable share"] == 0.03
    assert table.loc["full_high_lr", "forgetting"] == 5.0 and table.loc["full", "MLM loss after"] == 2.5
    assert all(dtype.kind == "f" for dtype in table.dtypes)  # so .round() works on every column


# --- several seeds, and the choice on validation


def seeded(name, seed, val, test, forgot=0.5):
    """One seed's run of a strategy, as run_strategy returns it."""
    return {**result(name, test, forgot, val=val), "seed": seed}


def test_the_best_strategy_is_chosen_on_validation_never_on_test():
    """Planted: full leads on validation, lora on test. The study's choice is full; the test
    split only reports its score. Choosing on the test split is refused outright."""
    results = {"full": result("full", 0.80, 0.5, val=0.95), "lora": result("lora", 0.97, 0.5, val=0.90)}
    assert study.best_strategy(results) == "full"
    with pytest.raises(ValueError, match="never on the test split"):
        study.best_strategy(results, on="test")
    with pytest.raises(KeyError, match="no validation metrics for lora"):
        study.best_strategy({"full": results["full"], "lora": {"test": {"roc_auc": 0.9}}})
    text = study.conclusion(results, {"loss": 2.0})
    assert "**full fine-tuning** came first with ROC AUC 0.950, and scored 0.800 on the test split" in text


def test_aggregate_gives_the_mean_and_spread_over_the_seeds():
    runs = [seeded("full", 42, 0.90, 0.80, forgot=0.4), seeded("full", 43, 0.94, 0.86, forgot=0.6)]
    agg = study.aggregate(runs)
    assert agg["seeds"] == [42, 43]
    assert agg["validation"]["roc_auc"] == pytest.approx(0.92) and agg["test"]["roc_auc"] == pytest.approx(0.83)
    assert agg["spread"]["test"]["roc_auc"] == pytest.approx(0.06 / 2 ** 0.5)  # sample std of two values
    assert agg["seed_values"]["test"]["roc_auc"] == [0.80, 0.86]
    assert agg["forgetting"]["forgetting"] == pytest.approx(0.5) and agg["spread"]["forgetting"] == pytest.approx(0.2 / 2 ** 0.5)
    assert agg["overfitting"] == runs[0]["overfitting"]  # the first seed's curves
    assert study.aggregate(runs[:1])["spread"]["test"]["roc_auc"] == 0.0
    assert study.seed_list(42, 3) == [42, 43, 44] and study.run_name("full", 43, 42) == "full.seed43"
    with pytest.raises(ValueError, match="seeds must be a whole number >= 1"):
        study.seed_list(42, 0)


def test_differences_within_the_spread_over_seeds_are_ties():
    """full leads lora by 0.02 on validation, but each wobbles by about 0.03 over its seeds: a tie.
    Frozen, 0.15 behind, is ranked."""
    seeds = {"full": [(0.92, 0.90), (0.96, 0.92)], "lora": [(0.88, 0.88), (0.96, 0.90)],
             "frozen": [(0.78, 0.75), (0.79, 0.76)]}
    results = {n: study.aggregate([seeded(n, 42 + i, v, t) for i, (v, t) in enumerate(runs)])
               for n, runs in seeds.items()}
    assert study.level(results["full"], results["lora"]) and not study.level(results["full"], results["frozen"])
    text = study.conclusion(results, {"loss": 2.0})
    assert ("Ranked on the validation split (mean over 2 seeds, ± the standard deviation), **full fine-tuning** "
            "came first with ROC AUC 0.940 ± 0.028, and scored 0.910 ± 0.014 on the test split; level with it "
            "(the difference lies within the spread over seeds): **LoRA**") in text
    assert "**lower layers frozen** came last, 0.785 ± 0.007 (0.755 ± 0.007 on test)" in text
    # The last can be level with the first when its own spread is wide, while the middle is not.
    wobbly = {"full": results["full"],
              "lora": study.aggregate([seeded("lora", 42, 0.85, 0.85), seeded("lora", 43, 0.86, 0.86)]),
              "frozen": study.aggregate([seeded("frozen", 42, 0.70, 0.7), seeded("frozen", 43, 0.98, 0.8)])}
    text = study.conclusion(wobbly, {"loss": 2.0})
    assert "level with it" not in text
    assert "**lower layers frozen** came last, 0.840 ± 0.198 (0.750 ± 0.071 on test), yet still within the spread" in text
    close = {n: study.aggregate([seeded(n, 42 + i, v, t) for i, (v, t) in enumerate(seeds[n])]) for n in ("full", "lora")}
    assert "Every strategy scored about the same validation ROC AUC (0.920 to 0.940, mean over 2 seeds" \
        in study.conclusion(close, {"loss": 2.0})


def test_conclusion_text_is_unchanged_on_recorded_results():
    """One finding per function: the same results give, word for word, the conclusion the single
    function wrote (recorded from a smoke run and variants of it, tests/strategies_cases.py)."""
    import json

    from strategies_cases import DATA, cases

    expected = json.loads((DATA / "strategies_conclusions.json").read_text())["conclusions"]
    written = {name: study.conclusion(*args, **kwargs) for name, args, kwargs in cases()}
    assert written.keys() == expected.keys()
    for name in expected:
        assert written[name] == expected[name], name


def test_each_finding_is_a_sentence_or_nothing():
    from strategies_cases import recorded_run

    run = recorded_run()
    facts = study.Facts.of(run["results"], run["before"], run["curve"], run["informative_head"])
    written = [finding(facts) for finding in study.FINDINGS]
    assert all(text is None or text.startswith("- **") for text in written)
    assert sum(text is not None for text in written) == 8  # the caveat is left out: the head is informative
    only_full = study.Facts.of({"full": run["results"]["full"]}, run["before"])
    assert study.lora_finding(only_full) is None and study.freezing_finding(only_full) is None


# --- issue 27: validation thresholds, intervals, the paired comparison with full fine-tuning, the cost


def probability_runs(name, strength, seeds=(42, 43), rows=120, seed=0):
    """Seed runs of a strategy with test probabilities: P(generated) a noisy function of the
    label (a higher `strength` separates the classes better), and a validation threshold."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * (rows // 2))
    runs = []
    for k, run_seed in enumerate(seeds):
        logits = strength * (2 * labels - 1) + rng.normal(0, 1.0, rows)
        runs.append({**seeded(name, run_seed, 0.9, 0.9), "threshold": 0.4 + 0.1 * k,
                     "test_probabilities": (1 / (1 + np.exp(-logits))).tolist()})
    return labels, runs


def test_intervals_are_those_of_the_mean_over_seeds_and_paired_with_full_fine_tuning():
    import numpy as np

    from nbutils import metrics

    labels, full = probability_runs("full", 2.0, seed=1)
    _, lora = probability_runs("lora", 2.0, seed=2)  # as strong as full: level with it
    _, frozen = probability_runs("frozen", 0.3, seed=3)  # far weaker: beaten
    seed_runs = {"full": full, "lora": lora, "frozen": frozen}
    out = study.test_intervals(seed_runs, labels, resamples=300)
    assert set(out["full"]) == {"intervals"} and set(out["lora"]) == {"intervals", "paired_vs_full"}

    def mean_auc(runs):
        return np.mean([metrics._roc_auc(labels, np.asarray(r["test_probabilities"])) for r in runs])

    for name, runs in seed_runs.items():
        auc, accuracy = out[name]["intervals"]["roc_auc"], out[name]["intervals"]["accuracy"]
        assert auc["low"] <= mean_auc(runs) <= auc["high"] and auc["resamples"] == 300
        # Accuracy at each seed's own (validation) threshold, averaged over the seeds.
        value = np.mean([np.mean((np.asarray(r["test_probabilities"]) >= r["threshold"]) == labels) for r in runs])
        assert accuracy["low"] <= value <= accuracy["high"]
    frozen_vs_full = out["frozen"]["paired_vs_full"]
    assert frozen_vs_full["difference"] == pytest.approx(mean_auc(frozen) - mean_auc(full))
    assert not frozen_vs_full["within_noise"] and frozen_vs_full["high"] < 0
    assert out["lora"]["paired_vs_full"]["within_noise"]
    # Stratified by prompt where the test essays carry one: another interval than by label alone.
    prompts = ["a", "b", "c"] * (len(labels) // 3)
    grouped = study.test_intervals(seed_runs, labels, prompts, resamples=300)
    assert grouped["frozen"]["intervals"] != out["frozen"]["intervals"]
    with pytest.raises(ValueError, match="frozen: 119 test probabilities for 120 test essays"):
        study.test_intervals({"frozen": [{**frozen[0], "test_probabilities": frozen[0]["test_probabilities"][:-1],
                                          "threshold": 0.5}]}, labels)


def test_conclusion_says_beats_or_level_from_the_paired_interval_only():
    """Planted: lora 0.03 behind full but the paired interval spans 0 (level); frozen 0.04
    behind with an interval below 0 (beaten); gradual ahead with an interval above 0."""
    made = results()
    interval = {"low": 0.9, "high": 0.97, "level": 0.95, "resamples": 1000}
    paired = {"full_high_lr": (-0.05, -0.09, -0.01), "frozen": (-0.04, -0.07, -0.01),
              "gradual": (0.02, 0.005, 0.04), "lora": (-0.03, -0.08, 0.02)}
    for name, r in made.items():
        r["intervals"] = {"roc_auc": interval, "accuracy": interval}
        if name in paired:
            d, lo, hi = paired[name]
            r["paired_vs_full"] = {"difference": d, "low": lo, "high": hi, "level": 0.95, "resamples": 1000,
                                   "within_noise": lo <= 0 <= hi}
    text = study.conclusion(made, {"loss": 2.0})
    assert "Against **full fine-tuning** (0.950 [0.900, 0.970]) on the same test essays, the paired 95% bootstrap" in text
    assert "**LoRA** (0.800 [0.900, 0.970]) level with it, -0.030 [-0.080, +0.020]: the interval spans 0" in text
    assert "**lower layers frozen** (0.810 [0.900, 0.970]) is beaten by it, -0.040 [-0.070, -0.010]" in text
    assert "**gradual unfreezing + discriminative learning rates** (0.780 [0.900, 0.970]) beats it by +0.020" in text
    assert "LoRA** (0.800 [0.900, 0.970]) beats" not in text and "LoRA** (0.800 [0.900, 0.970]) is beaten" not in text
    # Without paired results (an older record) the finding says nothing about the test comparison.
    assert "paired" not in study.conclusion(results(), {"loss": 2.0})


def test_conclusion_says_the_seeds_do_not_vary_the_split():
    text = study.conclusion(results(), {"loss": 2.0})
    assert "- **What the spread covers.** The seed would vary the classifier head's initialisation" in text
    assert "not the split" in text and "A tie here understates" in text
    seeds = {n: study.aggregate([seeded(n, 42, 0.9, 0.9), seeded(n, 43, 0.91, 0.9)]) for n in ("full", "lora")}
    assert "The 2 seeds vary the classifier head's initialisation" in study.conclusion(seeds, {"loss": 2.0})


def test_aggregate_keeps_each_seeds_validation_threshold():
    runs = [{**seeded("full", 42, 0.9, 0.8), "threshold": 0.31}, {**seeded("full", 43, 0.9, 0.8), "threshold": 0.62}]
    assert study.aggregate(runs)["thresholds"] == [0.31, 0.62]


def test_results_table_shows_the_test_interval():
    made = results()
    made["full"]["intervals"] = {"roc_auc": {"low": 0.91, "high": 0.98, "level": 0.95, "resamples": 1000}}
    table = study.results_table(made)
    assert table.loc["full", "test ROC AUC low"] == 0.91 and table.loc["full", "test ROC AUC high"] == 0.98
    assert all(dtype.kind == "f" for dtype in table.dtypes)


def test_the_full_profiles_cost_counts_every_seed():
    """The full profile's parameters (its file over the notebook's defaults): 5 strategies x 3
    seeds and 4 data-size runs, on about 8,000 training essays (10,000 less 10% validation and
    10% test) of at most 256 tokens, 3 epochs: about 97M training tokens, not the 36M of one
    seed. The note in the params file states the number the function gives."""
    import ast

    import nbformat
    import yaml

    from conftest import ROOT

    notebook = nbformat.read(ROOT / "notebooks" / "finetuning_strategies.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    defaults = {node.target.id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body}
    text = (ROOT / "params" / "finetuning_strategies" / "full.yaml").read_text()
    params = {**defaults, **yaml.safe_load(text)}
    train = round(params["max_samples"] * (1 - params["val_size"] - params["test_size"]))
    budget = study.training_budget(train, params["epochs"], params["strategies"], params["seeds"],
                                   params["data_sizes"], params["data_size_strategies"], params["max_length"])
    assert params["seeds"] == 3 and budget["main_runs"] == 15 and budget["curve_runs"] == 4 and budget["runs"] == 19
    assert budget["tokens"] == pytest.approx(97.1e6, rel=1e-3)
    one_seed = study.training_budget(train, params["epochs"], params["strategies"], 1, params["data_sizes"],
                                     params["data_size_strategies"], params["max_length"])
    assert one_seed["tokens"] == pytest.approx(35.6e6, rel=1e-3)  # what the old note counted
    assert f"{budget['rows_trained']:,.0f} essays trained on" in text
    assert f"about {budget['tokens'] / 1e6:.0f}M training tokens" in text
    assert "36M training tokens in all" not in text
