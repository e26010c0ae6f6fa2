"""Fine-tuning strategies side by side: what each one trains, and what the run shows.

The strategies study notebook trains one backbone on one task several ways:

| name | what trains | learning rate |
|---|---|---|
| `full` | every layer | `learning_rate` |
| `full_high_lr` | every layer | `high_learning_rate` |
| `frozen` | the layer groups above the bottom `freeze_to` (`nbutils.layers.freeze_to`) | `learning_rate` |
| `gradual` | the head first, then one more group from the top down (`nbutils.unfreezing`), each lower group at a lower rate (`nbutils.optim`) | `learning_rate` at the head |
| `lora` | low-rank adapters on the frozen backbone, and the classifier head (`peft`) | `lora_learning_rate` |

This module builds them (`plan`, `prepare_model`, `trainer_setup`), reads the Trainer's log into
train-vs-validation loss curves (`loss_history`, `overfitting`), keeps finished runs on disk so an
interrupted study resumes where it stopped (`save_result`, `saved_result`), and writes the
conclusion from the numbers (`conclusion`), so the text stays true whatever the profile, and
writes the run's record (`write_record`).

Every strategy is trained with several seeds (`seed_list`); its results are their mean, with
their spread (`aggregate`). Each run's decision threshold is chosen on its validation scores
(`nbutils.metrics.choose_threshold`), as in the detection notebook. The best strategy is the one
with the best *validation* score (`best_strategy`): the test split only reports it. On the test
split every strategy's mean score gets a bootstrap interval over the test essays, and each is
compared with full fine-tuning by a paired bootstrap on the same essays (`test_intervals`); the
conclusion calls a strategy level with full fine-tuning where that paired interval spans 0.
Validation differences within the spread over seeds are called ties (`level`). `training_budget`
counts what a study costs before it runs.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from nbutils.metrics import format_interval
from nbutils.run.record import format_value, write_json

DESCRIPTIONS = {
    "full": "full fine-tuning",
    "full_high_lr": "full fine-tuning, high learning rate",
    "frozen": "lower layers frozen",
    "gradual": "gradual unfreezing + discriminative learning rates",
    "lora": "LoRA",
}
STRATEGY_NAMES = tuple(DESCRIPTIONS)


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    learning_rate: float
    freeze_to: int = 0  # bottom layer groups frozen (negative: all but the top -n)
    gradual: bool = False  # gradual unfreezing with discriminative rates
    lr_factor: float = 1.0
    lr_decay: float | None = None
    lora: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def what_trains(self, n_groups: int) -> str:
        """In words, for a model of `n_groups` layer groups."""
        if self.lora:
            return "LoRA adapters and the head"
        if self.gradual:
            return f"the head, then one more of the {n_groups} layer groups at a time, downwards"
        if self.freeze_to:
            frozen = self.freeze_to if self.freeze_to > 0 else n_groups + self.freeze_to
            return f"the top {n_groups - frozen} of {n_groups} layer groups"
        return f"all {n_groups} layer groups"


def check_names(names, param: str = "strategies") -> list[str]:
    """The strategy names, checked: a non-empty list of known names, each once."""
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{param} must be a non-empty list of strategy names ({', '.join(STRATEGY_NAMES)}), "
                         f"got {names!r}")
    unknown = [n for n in names if n not in DESCRIPTIONS]
    if unknown:
        raise ValueError(f"{param}: unknown strategy {unknown[0]!r}; known: {', '.join(STRATEGY_NAMES)}")
    doubled = sorted({n for n in names if list(names).count(n) > 1})
    if doubled:
        raise ValueError(f"{param} names {', '.join(doubled)} more than once")
    return list(names)


def plan(names, *, learning_rate: float, high_learning_rate: float, lora_learning_rate: float,
         freeze_to: int, lr_factor: float = 2.6, lr_decay: float = 0.0) -> dict[str, Strategy]:
    """The strategies to run, in the order given, with their settings checked."""
    from nbutils.optim import discriminative_learning_rates

    names = check_names(names)
    for param, value in (("learning_rate", learning_rate), ("high_learning_rate", high_learning_rate),
                         ("lora_learning_rate", lora_learning_rate)):
        if not value > 0:
            raise ValueError(f"{param} must be positive, got {value!r}")
    if "full_high_lr" in names and not high_learning_rate > learning_rate:
        raise ValueError(f"high_learning_rate ({high_learning_rate:g}) must be above learning_rate "
                         f"({learning_rate:g}): the full_high_lr strategy is full fine-tuning at a higher rate")
    if "frozen" in names and (not isinstance(freeze_to, int) or isinstance(freeze_to, bool) or freeze_to == 0):
        raise ValueError(f"freeze_to must be a non-zero whole number for the frozen strategy (the bottom n "
                         f"layer groups, or -n: all but the top n), got {freeze_to!r}")
    discriminative_learning_rates(2, 1.0, lr_factor, lr_decay or None)  # checks the two settings
    made = {
        "full": Strategy("full", DESCRIPTIONS["full"], learning_rate),
        "full_high_lr": Strategy("full_high_lr", DESCRIPTIONS["full_high_lr"], high_learning_rate),
        "frozen": Strategy("frozen", DESCRIPTIONS["frozen"], learning_rate, freeze_to=freeze_to),
        "gradual": Strategy("gradual", DESCRIPTIONS["gradual"], learning_rate, gradual=True,
                            lr_factor=lr_factor, lr_decay=lr_decay or None),
        "lora": Strategy("lora", DESCRIPTIONS["lora"], lora_learning_rate, lora=True),
    }
    return {name: made[name] for name in names}


def prepare_model(strategy: Strategy, model, lora_config=None, blocks_per_group: int = 1):
    """Apply the strategy to a fresh task model: freeze its lower groups, or wrap it in LoRA.
    Gradual unfreezing freezes nothing here: its callback does that when training starts."""
    from nbutils import layers, lora

    if strategy.freeze_to:
        layers.freeze_to(model, strategy.freeze_to, blocks_per_group)
    if strategy.lora:
        if lora_config is None:
            raise ValueError("the lora strategy needs a LoraConfig")
        model = lora.add_lora(model, lora_config)
    return model


def unfreeze_pace(total_steps: int, n_groups: int, by: float = 0.5) -> int:
    """Steps between two unfreezings so that every layer group trains from `by` (a fraction) of
    training on: with 14 groups and 3 epochs, one group per epoch would leave most of a
    BERT-base frozen for the whole run."""
    if n_groups < 2:
        return max(1, total_steps)
    return max(1, int(total_steps * by) // (n_groups - 1))


def optimizer_steps(examples: int, batch_size: int, gradient_accumulation_steps: int, epochs: float,
                    processes: int = 1) -> int:
    """The optimizer steps the Trainer will run (its own rounding: whole batches per epoch)."""
    batches = math.ceil(examples / (batch_size * processes))
    per_epoch = max(1, batches // gradient_accumulation_steps)
    return math.ceil(epochs * per_epoch)


def trainer_setup(strategy: Strategy, blocks_per_group: int = 1, unfreeze_every_steps: int = 0):
    """(Trainer class, extra keyword arguments for it, extra callbacks) for the strategy.

    Gradual unfreezing needs `nbutils.optim.LayerGroupTrainer`, whose optimizer holds every
    parameter from the start (the stock Trainer would never update a group unfrozen later)."""
    from transformers import Trainer

    from nbutils.optim import LayerGroupTrainer
    from nbutils.unfreezing import GradualUnfreezing

    if strategy.gradual:
        options = dict(lr_factor=strategy.lr_factor, lr_decay=strategy.lr_decay,
                       blocks_per_group=blocks_per_group)
        return LayerGroupTrainer, options, [GradualUnfreezing(unfreeze_every_steps, blocks_per_group)]
    return Trainer, {}, []


def check_fractions(sizes, param: str = "data_sizes") -> list[float]:
    """Training-set sizes as fractions of the training split: a non-empty list, each in (0, 1]."""
    if not isinstance(sizes, (list, tuple)) or not sizes:
        raise ValueError(f"{param} must be a non-empty list of fractions of the training split, got {sizes!r}")
    for fraction in sizes:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"{param}: each size is a fraction of the training split in (0, 1], got {fraction!r}")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"{param} names a size more than once: {sizes!r}")
    return sorted(float(f) for f in sizes)


def subsample(dataset, fraction: float, seed: int, label_column: str = "labels", param: str = "data_sizes"):
    """A stratified random `fraction` of `dataset`'s rows (in their original order); 1: all."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    check_fractions([fraction], param)
    if fraction == 1:
        return dataset
    labels = np.asarray(list(dataset[label_column]))
    n = round(fraction * len(dataset))
    classes = len(set(labels.tolist()))
    if n < 2 * classes:
        raise ValueError(f"{param}: {fraction} of {len(dataset)} training rows is {n} rows, too few to train "
                         f"and keep every class (at least {2 * classes}); use a larger fraction")
    keep, _ = train_test_split(np.arange(len(dataset)), train_size=n, stratify=labels, random_state=seed)
    return dataset.select(np.sort(keep))


def combined_train_summary(summaries: list[dict]) -> dict:
    """One run-record `train` entry for several training runs: total runtime, samples per second
    and real tokens over all of them, padding efficiency over all their token slots."""
    if not summaries:
        raise ValueError("no training runs to summarize")
    runtime = sum(s["runtime_s"] for s in summaries)
    samples = sum(s["runtime_s"] * s["samples_per_s"] for s in summaries)
    real = sum(s.get("real_tokens", 0) for s in summaries)
    slots = sum(s.get("token_slots", 0) for s in summaries)
    return {"runtime_s": round(runtime, 3), "samples_per_s": round(samples / runtime, 3) if runtime else 0.0,
            "epochs": max(s["epochs"] for s in summaries), "processes": max(s["processes"] for s in summaries),
            "runs": len(summaries), "real_tokens": real, "token_slots": slots,
            "padding_efficiency": round(real / slots, 4) if slots else None,
            "tokens_per_s": round(real / runtime, 1) if runtime else None}


# ----------------------------------------------------------------------------------------------
# Train vs validation loss


def loss_history(log_history: list[dict], train_key: str = "eval_train_loss",
                 validation_key: str = "eval_validation_loss") -> list[dict]:
    """One row per evaluation during training: step, epoch, the loss on (a sample of) the
    training rows and on the validation split, both in evaluation mode (no dropout, the same
    model), their gap, and the Trainer's running training loss at that point (with dropout,
    averaged since the previous log)."""
    rows: dict[int, dict] = {}
    running = None
    for entry in log_history:
        if "loss" in entry:
            running = entry["loss"]
        for key, field in ((train_key, "train_loss"), (validation_key, "validation_loss")):
            if key in entry:
                row = rows.setdefault(entry["step"], {"step": entry["step"], "epoch": entry.get("epoch")})
                row[field] = float(entry[key])
                row["running_train_loss"] = running
    history = [row for _, row in sorted(rows.items()) if "train_loss" in row and "validation_loss" in row]
    for row in history:
        row["gap"] = row["validation_loss"] - row["train_loss"]
    return history


def overfitting(history: list[dict], tolerance: float = 0.05) -> dict:
    """How far the run overfit, from its `loss_history`.

    `final_gap`: validation minus training loss at the end; `gap_growth`: how much that gap
    widened since the first evaluation; `validation_rise`: how far the final validation loss lies
    above its lowest point (0.2 = 20% above). `overfit` is the classic signature: the validation
    loss ended more than `tolerance` above its best while the training loss kept falling.
    """
    if not history:
        return {"evaluations": 0, "final_gap": None, "gap_growth": None, "best_validation_loss": None,
                "best_step": None, "validation_rise": None, "overfit": None}
    best = min(history, key=lambda row: row["validation_loss"])
    last = history[-1]
    rise = last["validation_loss"] / best["validation_loss"] - 1 if best["validation_loss"] > 0 else 0.0
    return {"evaluations": len(history), "final_gap": last["gap"], "gap_growth": last["gap"] - history[0]["gap"],
            "best_validation_loss": best["validation_loss"], "best_step": best["step"],
            "final_train_loss": last["train_loss"], "final_validation_loss": last["validation_loss"],
            "validation_rise": rise, "tolerance": tolerance,
            "overfit": bool(rise > tolerance and last["train_loss"] < best["train_loss"])}


# ----------------------------------------------------------------------------------------------
# Finished runs on disk: an interrupted study resumes at the run it stopped in


def _result_path(folder, name: str) -> Path:
    return Path(folder) / f"{name}.json"


def save_result(folder, name: str, result: dict) -> Path:
    """Write one finished run's results (atomically: a crash never leaves half a file)."""
    return write_json(_result_path(folder, name), result, indent=1, default=float)


def saved_result(folder, name: str, settings: dict) -> dict | None:
    """The saved results of run `name`, if it finished with the same `settings`; else None."""
    path = _result_path(folder, name)
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("settings") == json.loads(json.dumps(settings, default=float)) else None


# ----------------------------------------------------------------------------------------------
# Several seeds: mean, spread, and the choice on validation


def seed_list(seed: int, seeds: int, param: str = "seeds") -> list[int]:
    """The training seeds of each strategy: `seed`, `seed + 1`, ... (`seeds` of them)."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"{param} must be a whole number >= 1 (training runs per strategy), got {seeds!r}")
    return [seed + k for k in range(seeds)]


def run_name(name: str, run_seed: int, first_seed: int) -> str:
    """The saved run's name: the strategy's for the first seed, `<name>.seed<n>` for the others."""
    return name if run_seed == first_seed else f"{name}.seed{run_seed}"


def spread(values) -> dict:
    """{"mean", "std", "values"}: the sample standard deviation (n - 1) over the seeds; 0 for one."""
    import numpy as np

    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": values}


def aggregate(runs: list[dict]) -> dict:
    """One strategy's result over its seeds' runs (first seed first): the first run's result
    (its loss history, overfitting summary, parameters, learning rates), with the test and
    validation metrics and the forgetting replaced by their means over the seeds, and
    `spread` = {"test": {metric: std}, "validation": {...}, "forgetting": std}, each seed's
    values under `seed_values`, and `seeds`."""
    if not runs:
        raise ValueError("no runs to aggregate")
    result = dict(runs[0])
    result["seeds"] = [r.get("seed") for r in runs]
    if all("threshold" in r for r in runs):
        result["thresholds"] = [r["threshold"] for r in runs]  # each seed's, chosen on its validation scores
    result["spread"] = {}
    for split in ("test", "validation"):
        if all(split in r for r in runs):
            stats = {m: spread(r[split][m] for r in runs) for m in runs[0][split]}
            result[split] = {m: s["mean"] for m, s in stats.items()}
            result["spread"][split] = {m: s["std"] for m, s in stats.items()}
            result.setdefault("seed_values", {})[split] = {m: s["values"] for m, s in stats.items()}
    if all(r.get("forgetting") for r in runs):
        stats = {k: spread(r["forgetting"][k] for r in runs) for k in ("mlm_loss_after", "forgetting")}
        result["forgetting"] = {**runs[0]["forgetting"], **{k: s["mean"] for k, s in stats.items()}}
        result["spread"]["forgetting"] = stats["forgetting"]["std"]
        result.setdefault("seed_values", {})["forgetting"] = stats["forgetting"]["values"]
    return result


def _std(result: dict, split: str, metric: str) -> float:
    return float((result.get("spread") or {}).get(split, {}).get(metric, 0.0))


def level(a: dict, b: dict, split: str = "validation", metric: str = "roc_auc", tie: float = 0.005) -> bool:
    """Whether two strategies' mean scores are a tie: their difference is no larger than their
    spreads over seeds together (the mean ± std ranges overlap), or than `tie`."""
    gap = abs(a[split][metric] - b[split][metric])
    return gap <= max(tie, _std(a, split, metric) + _std(b, split, metric))


def best_strategy(results: dict[str, dict], metric: str = "roc_auc", on: str = "validation") -> str:
    """The strategy with the best mean `metric` on the `on` split (validation: the test split
    must not choose what it then reports); the first named wins an exact tie."""
    if on == "test":
        raise ValueError("the best strategy is chosen on validation, never on the test split it is reported on")
    missing = [n for n, r in results.items() if on not in r]
    if missing:
        raise KeyError(f"no {on} metrics for {', '.join(missing)}: each run must score the {on} split")
    names = list(results)
    return max(names, key=lambda n: (results[n][on][metric], -names.index(n)))


# ----------------------------------------------------------------------------------------------
# What a study costs, counted before it runs


def training_budget(train_rows: int, epochs: float, strategies, seeds: int, data_sizes, data_size_strategies,
                    tokens_per_row: float) -> dict:
    """The study's training runs and tokens: every strategy once per seed on the whole training
    split, and the data-size curve's runs (its strategies at each size below 1, one seed; size 1
    reuses the first seed's run of a strategy the study trains anyway). `tokens_per_row`: the
    mean tokens an essay feeds the model (at most max_length, for an upper bound).
    Returns {"runs", "main_runs", "curve_runs", "rows_trained" (rows x epochs over all runs),
    "tokens"}."""
    main = len(strategies) * seeds
    curve = [(name, f) for name in data_size_strategies for f in data_sizes if f < 1 or name not in strategies]
    rows = epochs * train_rows * (main + sum(f for _, f in curve))
    return {"runs": main + len(curve), "main_runs": main, "curve_runs": len(curve),
            "rows_trained": rows, "tokens": rows * tokens_per_row}


# ----------------------------------------------------------------------------------------------
# How sure: intervals over the test essays and the paired comparison with full fine-tuning

REFERENCE = "full"  # every strategy is compared with full fine-tuning at the normal rate


def _mean_over_seeds(metric):
    """A metric of (labels, scores of shape (rows, seeds)): its mean over the seeds' columns,
    the quantity the study reports for a strategy."""
    import numpy as np

    def mean(labels, scores):
        return float(np.mean([metric(labels, scores[:, k]) for k in range(scores.shape[1])]))
    return mean


def _accuracy_over_seeds(thresholds):
    import numpy as np

    cuts = np.asarray(thresholds, dtype=np.float64)

    def accuracy(labels, scores):
        return float(np.mean((scores >= cuts).astype(int) == np.asarray(labels)[:, None]))
    return accuracy


def test_intervals(seed_runs: dict[str, list[dict]], labels, groups=None, reference: str = REFERENCE,
                   **bootstrap) -> dict[str, dict]:
    """Per strategy: {"intervals": {"roc_auc", "accuracy"}} for its mean test scores over its
    seeds, and, for every strategy but `reference`, {"paired_vs_full": ...}: the paired
    bootstrap of its mean test ROC AUC minus `reference`'s (`nbutils.metrics.paired_difference`).

    Computed on each seed's own probabilities, averaged over the seeds: the same quantity the
    table and the record report (not the seed-averaged probabilities, which would score an
    ensemble of the seeds, a different and usually better model than any run). The test essays
    are redrawn within each label and, with `groups` (their prompts), within each prompt; every
    strategy on the same redraws (one seed), so the pairing holds. The intervals cover which
    test essays were drawn; the spread over seeds is reported beside them, and which prompts
    went to test is not covered by either (the study varies the training seed, not the split).
    """
    import numpy as np

    from nbutils.metrics import _roc_auc, bootstrap_interval, paired_difference, strata

    labels = np.asarray(labels)
    stratum = strata(labels, groups)
    scores = {name: np.column_stack([np.asarray(r["test_probabilities"], dtype=np.float64) for r in runs])
              for name, runs in seed_runs.items()}
    for name, matrix in scores.items():
        if matrix.shape[0] != len(labels):
            raise ValueError(f"{name}: {matrix.shape[0]} test probabilities for {len(labels)} test essays")
    auc = _mean_over_seeds(_roc_auc)
    out = {}
    for name, runs in seed_runs.items():
        accuracy = _accuracy_over_seeds([r["threshold"] for r in runs])
        out[name] = {"intervals": {
            "roc_auc": bootstrap_interval(auc, labels, scores[name], stratum=stratum, **bootstrap),
            "accuracy": bootstrap_interval(accuracy, labels, scores[name], stratum=stratum, **bootstrap)}}
        if reference in scores and name != reference:
            out[name]["paired_vs_full"] = paired_difference(auc, labels, scores[name], scores[reference],
                                                            stratum=stratum, **bootstrap)
    return out


# ----------------------------------------------------------------------------------------------
# The results table and the conclusion


def results_table(results: dict[str, dict], metric: str = "roc_auc", metric_name: str = "ROC AUC"):
    """One row per strategy: validation and test metric (means over the seeds, the test
    metric's bootstrap interval where there is one, and its spread over the seeds), test
    accuracy (at each run's validation threshold), forgetting, overfitting, parameters trained,
    time (the first seed's run)."""
    import pandas as pd

    rows = {}
    for name, result in results.items():
        forgetting, fit = result.get("forgetting") or {}, result.get("overfitting") or {}
        rows[name] = {
            f"validation {metric_name}": (result.get("validation") or {}).get(metric),
            f"test {metric_name}": result["test"][metric],
            f"test {metric_name} low": ((result.get("intervals") or {}).get(metric) or {}).get("low", math.nan),
            f"test {metric_name} high": ((result.get("intervals") or {}).get(metric) or {}).get("high", math.nan),
            f"test {metric_name} std": _std(result, "test", metric),
            "test accuracy": result["test"].get("accuracy"),
            "MLM loss after": forgetting.get("mlm_loss_after"),
            "forgetting": forgetting.get("forgetting"),
            "final loss gap": fit.get("final_gap"),
            "validation loss rise": fit.get("validation_rise"),
            "trainable share": result["parameters"]["trainable"] / result["parameters"]["total"],
            "train s": result["train"]["runtime_s"],
        }
    # One dtype per column, so .round() works.
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("strategy")


def _overfitting_sentence(fit: dict, whose: str) -> str:
    """One sentence on a run's `overfitting` summary."""
    rise, tolerance = fit.get("validation_rise") or 0.0, fit.get("tolerance", 0.05)
    if fit.get("overfit"):
        return (f"{whose} validation loss ended {rise:.0%} above its lowest point while the training loss kept "
                "falling: it **overfit**.")
    if rise > tolerance:
        return (f"{whose} validation loss ended {rise:.0%} above its lowest point, but the training loss did not "
                "keep falling: no clear overfitting.")
    return f"{whose} validation loss ended within {tolerance:.0%} of its lowest point: no sign of overfitting."


@dataclass
class Facts:
    """What every finding reads: the results and the figures several findings share."""

    results: dict[str, dict]
    before: dict
    curve: dict[str, dict] | None
    informative_head: bool
    metric: str
    metric_name: str
    tie: float
    label: dict[str, str]  # strategy -> its description in bold
    scores: dict[str, float]  # strategy -> test metric
    forgot: dict[str, float]  # strategy -> forgetting, for the strategies that measured it
    seeds: int

    @classmethod
    def of(cls, results: dict[str, dict], before: dict, curve: dict[str, dict] | None = None,
           informative_head: bool = True, metric: str = "roc_auc", metric_name: str = "ROC AUC",
           tie: float = 0.005) -> Facts:
        if not results:
            raise ValueError("no results to conclude from")
        label = {name: f"**{r.get('description', name)}**" for name, r in results.items()}
        scores = {name: r["test"][metric] for name, r in results.items()}
        missing = [n for n, r in results.items() if "validation" not in r]
        if missing:
            raise KeyError(f"no validation metrics for {', '.join(missing)}: strategies are ranked on validation")
        return cls(results, before, curve, informative_head, metric, metric_name, tie, label, scores,
                   forgot={n: r["forgetting"]["forgetting"] for n, r in results.items() if r.get("forgetting")},
                   seeds=len(next(iter(results.values())).get("seeds") or [None]))


def task_metric_finding(f: Facts) -> str:
    """The strategies ranked on validation (ties within the spread over seeds said as such),
    with their test scores only reported."""
    on, metric, results = "validation", f.metric, f.results
    chosen = {name: r[on][metric] for name, r in results.items()}
    ranked = sorted(chosen, key=lambda n: (-chosen[n], list(results).index(n)))
    best, worst = ranked[0], ranked[-1]

    def shown(name, split):
        std = _std(results[name], split, metric)
        return format_value(results[name][split][metric]) + (f" ± {format_value(std)}" if f.seeds > 1 else "")

    over = f"mean over {f.seeds} seeds, ± the standard deviation" if f.seeds > 1 else "one seed"
    if len(ranked) > 1 and all(level(results[best], results[n], on, metric, f.tie) for n in ranked[1:]):
        return (f"- **Task metric.** Every strategy scored about the same {on} {f.metric_name} "
                f"({format_value(chosen[worst])} to {format_value(chosen[best])}, {over}): the differences lie within "
                f"the spread over seeds, so they are ties. On the test split: "
                + ", ".join(f"{f.label[n]} {shown(n, 'test')}" for n in ranked) + "." + _against_full(f))
    tied = [n for n in ranked[1:-1] if level(results[best], results[n], on, metric, f.tie)]
    text = (f"- **Task metric.** Ranked on the {on} split ({over}), {f.label[best]} came first with "
            f"{f.metric_name} {shown(best, on)}, and scored {shown(best, 'test')} on the test split")
    if tied:
        text += (f"; level with it (the difference lies within the spread over seeds): "
                 f"{', '.join(f.label[n] for n in tied)}")
    if len(ranked) > 1:
        text += f"; {f.label[worst]} came last, {shown(worst, on)} ({shown(worst, 'test')} on test)"
        if level(results[best], results[worst], on, metric, f.tie):
            text += ", yet still within the spread over seeds of the first"
    return text + "." + _against_full(f)


def _against_full(f: Facts) -> str:
    """Each strategy against full fine-tuning on the same test essays, from the paired bootstrap
    of the difference in the mean test ROC AUC ("level with it" where its interval spans 0); ""
    where the results hold no paired comparisons (or another metric is concluded on)."""
    paired = {n: r["paired_vs_full"] for n, r in f.results.items() if r.get("paired_vs_full")}
    if not paired or REFERENCE not in f.results or f.metric != "roc_auc":
        return ""

    def score(name):
        interval = (f.results[name].get("intervals") or {}).get(f.metric)
        return format_interval(f.results[name]["test"][f.metric], interval)

    level_ = paired[next(iter(paired))]["level"]
    parts = []
    for name, d in paired.items():
        span = f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        if d["within_noise"]:
            verdict = f"level with it, {span}: the interval spans 0"
        elif d["difference"] > 0:
            verdict = f"beats it by {span}"
        else:
            verdict = f"is beaten by it, {span}"
        parts.append(f"{f.label[name]} ({score(name)}) {verdict}")
    return (f" Against {f.label[REFERENCE]} ({score(REFERENCE)}) on the same test essays, the paired {level_:.0%} "
            f"bootstrap of the difference in mean test {f.metric_name} says: " + "; ".join(parts) + ".")


def split_finding(f: Facts) -> str:
    """What the spread and the intervals do not cover: the study varies the seed, not the split."""
    seeds = f"The {f.seeds} seeds vary" if f.seeds > 1 else "The seed would vary"
    return (f"- **What the spread covers.** {seeds} the classifier head's initialisation, the batch order and "
            "dropout, not the split: every run is scored on the same test essays, of the same few prompts, and "
            "the intervals cover which of those essays were drawn, not which prompts went to test. A tie here "
            "understates how much the strategies would move on another split.")


def forgetting_finding(f: Facts) -> str | None:
    """Which strategy raised the backbone's masked-LM loss most, and which least."""
    forgot = f.forgot
    if not forgot:
        return None
    order = sorted(forgot, key=lambda n: (-forgot[n], n))
    most, least = order[0], order[-1]
    after = {n: f.results[n]["forgetting"]["mlm_loss_after"] for n in forgot}
    text = (f"- **Forgetting.** Before fine-tuning, the backbone's masked-LM loss on the held-out "
            f"general text was {format_value(f.before['loss'])}. Fine-tuning raised it most with {f.label[most]} "
            f"(to {format_value(after[most])}, {forgot[most]:+.3f})")
    if len(order) > 1:
        text += f" and least with {f.label[least]} (to {format_value(after[least])}, {forgot[least]:+.3f})"
    return text + "."


def freezing_finding(f: Facts) -> str | None:
    """Whether freezing the lower layers cut forgetting, against full fine-tuning at the same rate."""
    forgot = f.forgot
    if "full" not in forgot or "frozen" not in forgot:
        return None
    noise = sum(float((f.results[n].get("spread") or {}).get("forgetting", 0.0)) for n in ("frozen", "full"))
    if abs(forgot["frozen"] - forgot["full"]) <= noise:  # within the spread over seeds
        verb = "made no difference beyond the spread over seeds to"
    else:
        verb = "cut" if forgot["frozen"] < forgot["full"] else "did not cut"
    return (f"- **Freezing.** Freezing the lower layers {verb} forgetting: {forgot['frozen']:+.3f} "
            f"against {forgot['full']:+.3f} for full fine-tuning at the same rate, with test "
            f"{f.metric_name} {format_value(f.scores['frozen'])} against {format_value(f.scores['full'])}.")


def caveat_finding(f: Facts) -> str | None:
    """Forgetting measured through an MLM head that knows little means little."""
    if not f.forgot or f.informative_head:
        return None
    return ("- **Caveat.** The masked-LM loss before fine-tuning is close to chance "
            "(uniform guessing over the vocabulary): this backbone's MLM head knows little, "
            "so the forgetting numbers mean little.")


def high_learning_rate_finding(f: Facts) -> str | None:
    """Full fine-tuning at the high rate against the normal one: score, forgetting, overfitting."""
    if "full" not in f.results or "full_high_lr" not in f.results:
        return None
    normal, high, forgot = f.results["full"], f.results["full_high_lr"], f.forgot
    fit_n, fit_h = normal.get("overfitting") or {}, high.get("overfitting") or {}
    text = (f"- **High learning rate.** At {high.get('learning_rate', float('nan')):g} instead of "
            f"{normal.get('learning_rate', float('nan')):g}, full fine-tuning scored "
            f"{format_value(f.scores['full_high_lr'])} instead of {format_value(f.scores['full'])}")
    if "full" in forgot and "full_high_lr" in forgot:
        text += f", forgot {forgot['full_high_lr']:+.3f} instead of {forgot['full']:+.3f}"
    if fit_h.get("final_gap") is not None and fit_n.get("final_gap") is not None:
        text += (f", and ended with a train-vs-validation loss gap of {format_value(fit_h['final_gap'])} instead of "
                 f"{format_value(fit_n['final_gap'])}. " + _overfitting_sentence(fit_h, "Its"))
        text += " At the normal rate, " + _overfitting_sentence(fit_n, "the")
    else:
        text += "."
    return text


def gradual_finding(f: Facts) -> str | None:
    """Gradual unfreezing's score and forgetting, beside full fine-tuning's."""
    if "gradual" not in f.results:
        return None
    forgot = f.forgot
    text = f"- **Gradual unfreezing.** With discriminative learning rates it scored {format_value(f.scores['gradual'])}"
    if "gradual" in forgot:
        text += f" and forgot {forgot['gradual']:+.3f}"
        if "full" in forgot:
            text += f" (full fine-tuning: {format_value(f.scores['full'])}, {forgot['full']:+.3f})"
    return text + "."


def lora_finding(f: Facts) -> str | None:
    """LoRA's share of trained parameters, its score and its forgetting."""
    if "lora" not in f.results:
        return None
    share = f.results["lora"]["parameters"]["trainable"] / f.results["lora"]["parameters"]["total"]
    text = f"- **LoRA.** It trained {share:.2%} of the parameters and scored {format_value(f.scores['lora'])}"
    if "lora" in f.forgot:
        text += f", forgetting {f.forgot['lora']:+.3f}"
    return text + "."


def data_size_finding(f: Facts) -> str | None:
    """The test metric from the fewest to the most training rows, and who led with the fewest."""
    if not f.curve:
        return None
    parts, smallest = [], {}
    for name, points in f.curve.items():
        sizes = sorted(points, key=float)
        if len(sizes) >= 2:
            small, large = sizes[0], sizes[-1]
            smallest[name] = (float(small), points[small])
            parts.append(f"{f.label.get(name, name)} went from {format_value(points[small])} with {small} training "
                         f"rows to {format_value(points[large])} with {large}")
    if not parts:
        return None
    text = f"- **Data size.** Test {f.metric_name}: " + "; ".join(parts) + "."
    if len(smallest) >= 2 and len({size for size, _ in smallest.values()}) == 1:
        lead = sorted(smallest, key=lambda n: (-smallest[n][1], n))
        gap = smallest[lead[0]][1] - smallest[lead[1]][1]
        # One seed per point: a gap within the main runs' spread over seeds is a tie.
        noise = max(f.tie, sum(_std(f.results[n], "test", f.metric) for n in lead[:2] if n in f.results))
        text += (f" With the fewest rows, {f.label.get(lead[0], lead[0])} led by {gap:.3f}." if gap > noise else
                 " With the fewest rows, they were level (within the spread over seeds).")
    return text


# The conclusion's findings, in the order it states them; each returns a markdown line or None.
FINDINGS = (task_metric_finding, split_finding, forgetting_finding, freezing_finding, caveat_finding,
            high_learning_rate_finding, gradual_finding, lora_finding, data_size_finding)


def conclusion(results: dict[str, dict], before: dict, curve: dict[str, dict] | None = None,
               informative_head: bool = True, metric: str = "roc_auc", metric_name: str = "ROC AUC",
               tie: float = 0.005) -> str:
    """A markdown line per finding (`FINDINGS`), each computed from this run's numbers.

    `results` maps strategy name -> its results (`test`, `forgetting`, `overfitting`,
    `parameters`, `learning_rate`, `description`, `validation`, and with several seeds their
    means, `spread` and `seeds` from `aggregate`); the strategies are ranked on their validation
    scores, the test scores only reported. `before` is the backbone's masked-LM result before
    fine-tuning; `curve` maps strategy -> {training rows: test metric}. Validation scores whose
    difference lies within the spread over seeds (or within `tie`) are called level rather than
    ranked; on the test split, where the results hold `paired_vs_full` (`test_intervals`), each
    strategy is said to beat full fine-tuning, be beaten by it, or be level with it from that
    paired interval alone.
    """
    facts = Facts.of(results, before, curve, informative_head, metric, metric_name, tie)
    return "\n".join(line for line in (finding(facts) for finding in FINDINGS) if line is not None)


def write_record(run, *, splits, fingerprint: str, group_column: str, split_hashes: dict, overlap: dict,
                 general_texts: list[str], masked_tokens: int, report: dict, results: dict[str, dict], best: str,
                 seeds: list[int], seed_runs: dict[str, list[dict]], curve: dict[str, dict], curve_runs: list[dict],
                 forgetting_before: dict, informative_head: bool) -> dict:
    """The study's run record (`nbutils.run.record`), written into the run folder and returned.

    `data`: the essays (source, fingerprint, split sizes, the prompt column split on, the hashes
    of each split's row ids, the overlap removed, the data report) and the general text the
    forgetting is measured on (where from, how many passages, their fingerprint, the masked
    tokens scored). `metrics`: the `best` strategy's mean test ROC AUC and accuracy (at each
    run's validation threshold; it was chosen on validation) with their bootstrap intervals
    (`intervals`, from `test_intervals`) and the split they were measured on (`measured_on`),
    and per strategy its results (`aggregate`: means over the `seeds`, their spread
    and each seed's values, the loss history, overfitting, forgetting, parameters), the
    masked-LM loss before fine-tuning, whether the MLM head is informative, and the data-size
    `curve`. `train`: every run's timings and token counts (`seed_runs` and the curve's own
    `curve_runs`), combined and by run. Every process calls it; the main one writes."""
    from nbutils.run import record
    from nbutils.tasks.strategies.forgetting import text_fingerprint

    config = run.config
    # Results in `metrics` (the same on every rerun), timings and token counts in `train`.
    strategies = {n: {k: v for k, v in r.items() if k not in ("settings", "test_probabilities", "train")}
                  for n, r in results.items()}
    # The essays were split by prompt where group_column is set: test prompts are unseen in training.
    test_split = "test (prompts unseen in training)" if group_column else "test"
    runs = {r["settings"]["run"]: r for strategy_runs in seed_runs.values() for r in strategy_runs}
    runs.update({r["settings"]["run"]: r for r in curve_runs})
    return record.write(
        run, task="ai-text-detection", model=config["model_name"],
        data={"source": config["data_source"], "fingerprint": fingerprint,
              "train": len(splits["train"]), "validation": len(splits["validation"]), "test": len(splits["test"]),
              "group_column": group_column or None, "split_hashes": split_hashes, "overlap": overlap,
              "general_text": {"source": config["general_text_source"], "config": config["general_text_config"],
                               "split": config["general_text_split"], "passages": len(general_texts),
                               "fingerprint": text_fingerprint(general_texts), "masked_tokens": masked_tokens},
              "report": report},
        metrics={"roc_auc": results[best]["test"]["roc_auc"], "accuracy": results[best]["test"]["accuracy"],
                 "intervals": {m: results[best]["intervals"][m] for m in ("roc_auc", "accuracy")},
                 "measured_on": {m: test_split for m in ("roc_auc", "accuracy")},
                 "best_strategy": best, "best_chosen_on": "validation", "threshold_chosen_on": "validation",
                 "seeds": seeds, "strategies": strategies, "forgetting_before": forgetting_before,
                 "mlm_head_informative": informative_head,
                 "data_size_curve": {n: {str(k): v for k, v in points.items()} for n, points in curve.items()}},
        primary_metric="roc_auc",
        train={**combined_train_summary([r["train"] for r in runs.values()]),
               "by_run": {n: r["train"] for n, r in runs.items()}},
        parameters={k: results[best]["parameters"][k] for k in ("trainable", "total")})


@contextmanager
def quiet_transformers(quiet: bool = True):
    """Within the block, transformers logs errors only (its load report is a warning)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
