"""Combine detection runs: each model alone, the mean of probabilities, rank averaging, stacking.

The detection notebook leaves, per run, `validation_probabilities.csv` and
`test_probabilities.csv` (columns row_id, label, prob_generated, and where the run split by
prompt a `group` column: the essay's prompt) beside its run record. Runs
combine only when they scored the same essays in the same order with the same labels, so
that is checked first (`check_aligned`). The stacker, a logistic regression over the runs'
log-odds, is fitted on the validation split only: `fit_stacker` refuses any other split, and
`Stacker.predict` refuses rows it was fitted on. Every method's decision threshold is chosen
on its own validation scores (`choose_threshold`) and only then applied to the test split.

Every test ROC AUC comes with a bootstrap interval over the test essays (`test_intervals`:
stratified by label, and by prompt where the files carry `group`), and two methods scored on
the same essays are compared by a paired bootstrap of their difference (`paired_comparisons`:
each ensemble against the best single model, chosen on validation, and every pair of
backbones); the conclusions are written from those intervals (`conclusion`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nbutils.metrics import choose_threshold  # noqa: F401  (one helper for every notebook's threshold)
from nbutils.metrics import classification_intervals, describe_difference, format_interval, paired_roc_auc
from nbutils.run.record import RECORD_FILE
from nbutils.run.setup import INCOMPLETE

SPLITS = ("validation", "test")
COLUMNS = ("row_id", "label", "prob_generated")
GROUP = "group"  # optional column: the essay's prompt, where the detection run split by prompt
MEAN, RANK, STACK = "mean_probability", "rank_average", "stacked_logreg"
METHODS = (MEAN, RANK, STACK)
MINIMUM_RUNS = 2


class EnsembleError(ValueError):
    """Runs that cannot be combined: too few, malformed, or not scoring the same essays."""


def probability_file(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"{split}_probabilities.csv"


@dataclass(frozen=True)
class Run:
    name: str  # the run's folder name under runs_dir (e.g. "deberta")
    folder: Path
    record: dict  # its metrics.json
    splits: dict  # split -> DataFrame with COLUMNS

    @property
    def files(self) -> list[Path]:
        return [probability_file(self.folder, split) for split in SPLITS]


def default_runs_dir(run_dir: str | Path, project: str, notebook: str = "detect_ai_text") -> Path:
    """`<outputs>/<profile>/<notebook>` for a run in `<outputs>/<profile>/<project>` (the
    runner's layout): the detection runs of the same profile, beside this one."""
    run_dir, parts = Path(run_dir), Path(project).parts
    if not parts or run_dir.parts[-len(parts):] != parts:
        raise EnsembleError(f"output_dir {run_dir} does not end with the project name {project!r}, "
                            "so the detection runs beside it cannot be found: set runs_dir")
    return run_dir.parents[len(parts) - 1] / notebook


def kaggle_runs_dir(env, run_dir: str | Path, project: str, notebook: str = "detect_ai_text") -> Path:
    """On Kaggle each detection run is a kernel of its own, and its outputs (its
    /kaggle/working) are attached to this one as an input: `<input>/<kernel>/<output_dir>`, e.g.
    `/kaggle/input/llm-detect-ai-text-bert/outputs/full/detect_ai_text/bert`. This
    gathers every attached run of `notebook` for the profile of `run_dir` into one folder of links
    under this run's folder, laid out as `default_runs_dir` expects, and returns it."""
    beside = default_runs_dir(run_dir, project, notebook)  # .../outputs/<profile>/<notebook>
    relative = beside.relative_to(env.working_dir)  # outputs/<profile>/<notebook>
    gathered = Path(run_dir) / "kaggle_runs"
    gathered.mkdir(parents=True, exist_ok=True)
    for run in sorted(Path(env.input_dir).glob(f"*/{relative}/*")):
        link = gathered / run.name
        if run.is_dir() and not link.exists():
            link.symlink_to(run, target_is_directory=True)
    return gathered


def read_probabilities(path: Path) -> pd.DataFrame:
    """One probability file, checked: its columns, unique row ids, 0/1 labels, probabilities.
    The optional `group` column (the essay's prompt) is kept where the file fills it; a column
    left empty on every row (a run without prompts writes it so) counts as absent, one empty on
    some rows only is an error, as it would stratify the bootstrap on a missing value."""
    table = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise EnsembleError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)} "
                            "(as the detection notebook writes them)")
    filled = GROUP in table.columns and table[GROUP].notna().any()
    table = table[list(COLUMNS) + ([GROUP] if filled else [])]
    if GROUP in table.columns and table[GROUP].isna().any():
        raise EnsembleError(f"{path}: the {GROUP} column is empty for row_id "
                            f"{table.loc[table[GROUP].isna(), 'row_id'].iloc[0]}")
    if table["row_id"].duplicated().any():
        dup = table.loc[table["row_id"].duplicated(), "row_id"].iloc[0]
        raise EnsembleError(f"{path}: row_id {dup} appears more than once")
    bad = ~table["label"].isin([0, 1])
    if bad.any():
        raise EnsembleError(f"{path}: label must be 0 or 1, row_id {table.loc[bad, 'row_id'].iloc[0]} "
                            f"has {table.loc[bad, 'label'].iloc[0]}")
    probs = pd.to_numeric(table["prob_generated"], errors="coerce")
    bad = ~probs.between(0, 1)  # also catches NaN and text
    if bad.any():
        raise EnsembleError(f"{path}: prob_generated must be a probability in [0, 1], row_id "
                            f"{table.loc[bad, 'row_id'].iloc[0]} has {table.loc[bad, 'prob_generated'].iloc[0]}")
    return table.assign(prob_generated=probs.astype(float))


def find_runs(runs_dir: str | Path, names: list[str] | tuple = ()) -> tuple[list[Run], dict[str, str]]:
    """The finished runs in `runs_dir` (those named, or every subfolder), and why the others
    were left out. A run counts once it has its record and both probability files; a run folder
    only ever holds a finished run (an unfinished one works in `<name>.incomplete`, never read
    here; see nbutils.run.setup)."""
    import json

    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise EnsembleError(f"runs_dir {runs_dir} does not exist: run the detection notebook first "
                            "(make run RUN=detect_ai_text) or point runs_dir at its runs")
    names = list(names) or sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and INCOMPLETE not in p.name)
    if len(set(names)) != len(names):
        raise EnsembleError(f"runs names a run more than once: {names}")
    clash = sorted(set(names) & set(METHODS))
    if clash:
        raise EnsembleError(f"a run may not be named like an ensemble method: {clash}")
    runs, left_out = [], {}
    for name in names:
        folder = runs_dir / name
        needed = [folder / RECORD_FILE] + [probability_file(folder, s) for s in SPLITS]
        missing = [p.name for p in needed if not p.is_file()]
        if not folder.is_dir():
            left_out[name] = f"no folder {folder} (not run)"
        elif missing:
            left_out[name] = f"no {', '.join(missing)} (the run did not finish)"
        else:
            runs.append(Run(name, folder, json.loads((folder / RECORD_FILE).read_text()),
                            {s: read_probabilities(probability_file(folder, s)) for s in SPLITS}))
    return runs, left_out


def load_runs(runs_dir: str | Path, names: list[str] | tuple = (),
              minimum: int = MINIMUM_RUNS) -> tuple[list[Run], dict[str, str]]:
    """`find_runs`, and an error naming the folder when fewer than `minimum` runs finished."""
    runs, left_out = find_runs(runs_dir, names)
    if len(runs) < minimum:
        found = ", ".join(r.name for r in runs) or "none"
        why = "; ".join(f"{name}: {reason}" for name, reason in left_out.items())
        raise EnsembleError(
            f"an ensemble needs at least {minimum} finished detection runs in {runs_dir}, found "
            f"{len(runs)} ({found})" + (f"; left out: {why}" if why else "")
            + ". Run the detection notebook first (make run RUN=detect_ai_text) or set runs_dir / runs")
    return runs, left_out


SAME_SPLIT_HINT = ("runs combine only when they split the same data the same way: the same "
                   "data_source, seed, val_size, test_size, max_samples, group_column and holdout "
                   "settings (the cross-validation and search variants use other rows)")


def check_aligned(runs: list[Run]) -> None:
    """Every run must hold the same rows (row_id), in the same order, with the same labels, in
    each split; otherwise an error names the two runs and the first row where they differ."""
    first = runs[0]
    for split in SPLITS:
        a = first.splits[split]
        for other in runs[1:]:
            b = other.splits[split]
            ids_a, ids_b = a["row_id"].to_numpy(), b["row_id"].to_numpy()
            n = min(len(ids_a), len(ids_b))
            differ = np.flatnonzero(ids_a[:n] != ids_b[:n])
            if differ.size:
                i = int(differ[0])
                how = ("the same essays in a different order" if sorted(ids_a) == sorted(ids_b)
                       else "different essays")
                raise EnsembleError(
                    f"runs {first.name!r} and {other.name!r} hold {how} in the {split} split: "
                    f"row {i} is row_id {ids_a[i]} in {first.name!r} but row_id {ids_b[i]} in "
                    f"{other.name!r}; {SAME_SPLIT_HINT}")
            if len(ids_a) != len(ids_b):
                longer, ids = (first, ids_a) if len(ids_a) > len(ids_b) else (other, ids_b)
                raise EnsembleError(
                    f"runs {first.name!r} and {other.name!r} hold different essays in the {split} "
                    f"split: {len(ids_a)} vs {len(ids_b)} rows; row {n} (row_id {ids[n]}) is only in "
                    f"{longer.name!r}; {SAME_SPLIT_HINT}")
            # The same essays must carry the same label and, where both name one, the same prompt.
            for column, parameter in (("label", "label_column"), (GROUP, "group_column")):
                if column not in a.columns or column not in b.columns:
                    continue
                values_a, values_b = a[column].astype(str).to_numpy(), b[column].astype(str).to_numpy()
                differ = np.flatnonzero(values_a != values_b)
                if differ.size:
                    i = int(differ[0])
                    raise EnsembleError(
                        f"runs {first.name!r} and {other.name!r} give row_id {ids_a[i]} of the {split} "
                        f"split (row {i}) different {column}s: {values_a[i]!r} vs {values_b[i]!r}; "
                        f"the runs must read the same data with the same {parameter}")


@dataclass(frozen=True)
class SplitScores:
    """One split of the aligned runs: its rows, labels and each run's P(generated)."""
    split: str  # "validation" or "test"
    row_ids: np.ndarray
    labels: np.ndarray
    probabilities: pd.DataFrame  # one column per run, rows in row_ids order
    groups: np.ndarray | None = None  # each row's prompt, where the probability files carry it


def aligned_scores(runs: list[Run]) -> dict[str, SplitScores]:
    """Check the runs align (`check_aligned`), then one `SplitScores` per split. The rows'
    prompts (`groups`) come from the first run whose file has the `group` column (the runs that
    have it agree, `check_aligned`); None where no run's file has it."""
    check_aligned(runs)
    tables = {}
    for split in SPLITS:
        first = runs[0].splits[split]
        probs = pd.DataFrame({r.name: r.splits[split]["prob_generated"].to_numpy() for r in runs})
        grouped = next((r.splits[split] for r in runs if GROUP in r.splits[split].columns), None)
        groups = None if grouped is None else grouped[GROUP].astype(str).to_numpy()
        tables[split] = SplitScores(split, first["row_id"].to_numpy(), first["label"].to_numpy(), probs, groups)
    return tables


def mean_probability(probabilities: pd.DataFrame) -> np.ndarray:
    return probabilities.mean(axis=1).to_numpy()


def rank_average(probabilities: pd.DataFrame, reference: pd.DataFrame | None = None) -> np.ndarray:
    """The mean over runs of each row's rank, as a fraction: the share of the `reference` rows
    (each run's validation scores) that run scores below it, ties counting half. Only the order
    of each run's scores counts, so a run with confident, bunched-up probabilities weighs no more
    than one with spread-out ones.

    Test scores are placed on the *validation* scores' distribution, not ranked among
    themselves: a threshold chosen on validation rank fractions then means the same on test
    (ranking the test split on its own would force its scores onto a uniform spread whatever the
    models said, so the cut would call a fixed share of test essays generated). Without
    `reference` the rows are their own reference (the validation split's case).
    """
    reference = probabilities if reference is None else reference
    if list(reference.columns) != list(probabilities.columns):
        raise EnsembleError(f"rank_average: the reference holds runs {list(reference.columns)}, "
                            f"the scores {list(probabilities.columns)}")
    fractions = []
    for run in probabilities.columns:
        ref = np.sort(reference[run].to_numpy(dtype=np.float64))
        scores = probabilities[run].to_numpy(dtype=np.float64)
        below = np.searchsorted(ref, scores, side="left")
        at_or_below = np.searchsorted(ref, scores, side="right")
        fractions.append((below + at_or_below) / (2 * len(ref)))
    return np.mean(fractions, axis=0)


def log_odds(probabilities) -> np.ndarray:
    """The stacker's features: log(p / (1 - p)), clipped so that 0 and 1 stay finite."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@dataclass
class Stacker:
    """A logistic regression over the runs' log-odds, fitted on validation rows only."""
    model: object  # the fitted LogisticRegressionCV
    columns: list[str]  # the runs, in feature order
    fitted_row_ids: np.ndarray  # the (validation) rows it was fitted on
    validation_scores: np.ndarray  # out-of-fold P(generated) for each of those rows
    folds: int

    def predict(self, scores: SplitScores) -> np.ndarray:
        """P(generated) for rows it was not fitted on (the test split)."""
        if list(scores.probabilities.columns) != self.columns:
            raise EnsembleError(f"the stacker was fitted on runs {self.columns}, "
                                f"got {list(scores.probabilities.columns)}")
        seen = np.intersect1d(scores.row_ids, self.fitted_row_ids)
        if seen.size:
            raise EnsembleError(
                f"the stacker was fitted on {seen.size} of these {scores.split} rows (row_id "
                f"{seen[0]}, ...): its scores there would be in-sample. For the validation split "
                "use stacker.validation_scores (out of fold)")
        return self.model.predict_proba(log_odds(scores.probabilities.to_numpy()))[:, 1]

    def summary(self) -> dict:
        return {"fitted_on": "validation", "rows": int(len(self.fitted_row_ids)), "folds": self.folds,
                "C": float(self.model.C_),
                "coefficients": {c: float(w) for c, w in zip(self.columns, self.model.coef_[0])},
                "intercept": float(self.model.intercept_[0])}


def fit_stacker(validation: SplitScores, folds: int = 5, seed: int = 0, cs: int = 10) -> Stacker:
    """Fit the stacker on the validation split, choosing the regularization strength C (`cs`
    values, log-spaced from 1e-4 to 1e4) by `folds`-fold cross-validated log loss.

    Its out-of-fold validation scores (`cross_val_predict`: each validation row scored by a
    stacker, C chosen again inside, fitted on the other folds) are what its threshold is chosen
    on; scores of the rows a model was fitted on would flatter it.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if validation.split != "validation":
        raise EnsembleError(f"the stacker is fitted on the validation split only, got the "
                            f"{validation.split!r} split: it must never see the rows it is scored on")
    if folds < 2:
        raise EnsembleError(f"stacker_folds must be at least 2, got {folds}")
    labels = np.asarray(validation.labels)
    rarer = int(np.bincount(labels, minlength=2).min())
    # Outer folds for the out-of-fold scores, inner folds inside each to choose C: each class
    # needs folds + 2 rows for the inner folds to find `folds` of them.
    if rarer < folds + 2:
        raise EnsembleError(f"stacker_folds {folds} needs at least {folds + 2} validation essays "
                            f"of each class, the rarer class has {rarer}: lower stacker_folds")

    def make():
        return LogisticRegressionCV(Cs=cs, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                    scoring="neg_log_loss", l1_ratios=(0.0,),
                                    use_legacy_attributes=False, max_iter=1000)

    features = log_odds(validation.probabilities.to_numpy())
    outer = StratifiedKFold(folds, shuffle=True, random_state=seed + 1)
    out_of_fold = cross_val_predict(make(), features, labels, cv=outer, method="predict_proba")[:, 1]
    model = make().fit(features, labels)
    return Stacker(model, list(validation.probabilities.columns), np.asarray(validation.row_ids).copy(),
                   out_of_fold, folds)


def method_scores(tables: dict[str, SplitScores], stacker: Stacker) -> dict[str, dict[str, np.ndarray]]:
    """Validation and test scores of every method: each run alone, then the three ensembles."""
    methods = {name: {s: tables[s].probabilities[name].to_numpy() for s in SPLITS}
               for name in tables["validation"].probabilities.columns}
    methods[MEAN] = {s: mean_probability(tables[s].probabilities) for s in SPLITS}
    # Both splits ranked against the validation scores (test placed on their distribution).
    methods[RANK] = {s: rank_average(tables[s].probabilities, tables["validation"].probabilities)
                     for s in SPLITS}
    methods[STACK] = {"validation": stacker.validation_scores, "test": stacker.predict(tables["test"])}
    return methods


def evaluate(methods: dict[str, dict[str, np.ndarray]], tables: dict[str, SplitScores]) -> dict[str, dict]:
    """Per method: the threshold chosen on its validation scores, its validation accuracy and
    ROC AUC there, and the test metrics at that threshold (ROC AUC from the scores)."""
    from sklearn.metrics import roc_auc_score

    from nbutils.metrics import binary_classification_metrics

    results = {}
    for name, scores in methods.items():
        threshold, val_accuracy = choose_threshold(tables["validation"].labels, scores["validation"])
        test = binary_classification_metrics(tables["test"].labels, scores["test"], threshold)
        results[name] = {**test, "threshold": threshold, "validation_accuracy": val_accuracy,
                         "validation_roc_auc": float(roc_auc_score(tables["validation"].labels,
                                                                   scores["validation"]))}
    return results


def best_single(results: dict[str, dict], runs: list[Run]) -> str:
    """The run with the best validation ROC AUC (first listed on a tie): chosen without the test."""
    return max((r.name for r in runs), key=lambda name: results[name]["validation_roc_auc"])


# --- How sure: intervals over the test essays, paired differences, conclusions from them ----


def test_intervals(methods: dict[str, dict[str, np.ndarray]], tables: dict[str, SplitScores],
                   results: dict[str, dict], **bootstrap) -> dict[str, dict]:
    """Per method, bootstrap intervals of its test ROC AUC and of its test accuracy at its
    validation threshold (`nbutils.metrics.classification_intervals`): the test essays redrawn
    within each label, and within each prompt where the files carry one. Every method is
    redrawn on the same resamples (one seed), as its scores share the same rows."""
    test = tables["test"]
    return {name: classification_intervals(test.labels, scores["test"], results[name]["threshold"],
                                           groups=test.groups, **bootstrap)
            for name, scores in methods.items()}


def paired_comparisons(methods: dict[str, dict[str, np.ndarray]], tables: dict[str, SplitScores],
                       runs: list[Run], best: str, **bootstrap) -> list[dict]:
    """Paired bootstraps of test ROC AUC differences (`nbutils.metrics.paired_roc_auc`), each
    row {"a", "b", "kind", "difference", "low", "high", "level", "resamples", "within_noise",
    "conclusion"}: first every ensemble against `best` (the best single model, chosen on
    validation), then every pair of backbones, in the order the runs were given. Both models of
    a pair are scored on the same redrawn essays each time, so what the essays share cancels."""
    from itertools import combinations

    test = tables["test"]
    pairs = [(method, best, "ensemble vs best single") for method in METHODS if method in methods]
    pairs += [(a.name, b.name, "backbones") for a, b in combinations(runs, 2)]
    rows = []
    for a, b, kind in pairs:
        result = paired_roc_auc(test.labels, methods[a]["test"], methods[b]["test"], groups=test.groups, **bootstrap)
        rows.append({"a": a, "b": b, "kind": kind, **result,
                     "conclusion": describe_difference(a, b, result, "ROC AUC")})
    return rows


def paired_table(paired: list[dict]) -> pd.DataFrame:
    """The paired comparisons as a table, one row per pair."""
    return pd.DataFrame([{"a": r["a"], "b": r["b"], "kind": r["kind"],
                          "ROC AUC a - b": format_interval(r["difference"], r, digits=3),
                          "within noise": r["within_noise"]} for r in paired])


def conclusion(results: dict[str, dict], intervals: dict[str, dict], paired: list[dict], best: str,
               grouped: bool) -> str:
    """Markdown: what the test split can and cannot tell apart, written from the paired
    intervals only (a difference whose interval spans 0 is "within noise", never a win)."""
    level = paired[0]["level"] if paired else 0.95
    over = "test essays, redrawn within each label and prompt" if grouped else "test essays, redrawn within each label"
    lines = [f"Test ROC AUC with its {level:.0%} bootstrap interval over the {over}:"]
    lines += [f"- {name}: {format_interval(results[name]['roc_auc'], intervals[name]['roc_auc'])}"
              for name in results]
    ensembles = [r for r in paired if r["kind"] == "ensemble vs best single"]
    backbones = [r for r in paired if r["kind"] == "backbones"]
    if ensembles:
        lines.append(f"\n**The ensembles against the best single model** ({best}, chosen on validation ROC AUC):")
        lines += [f"- {r['conclusion']}." for r in ensembles]
    if backbones:
        separated = [r for r in backbones if not r["within_noise"]]
        lines.append(f"\n**The backbones against each other** ({len(separated)} of {len(backbones)} pairs told "
                     "apart on these test essays):")
        lines += [f"- {r['conclusion']}." for r in backbones]
    lines.append("\nThese intervals measure which essays of the test prompts were drawn, not which prompts "
                 "landed in the test split (a split by prompt puts only a few there) nor the training seed "
                 "(each backbone trained once): a difference called clear here may still not hold on other "
                 "prompts, and one within noise is no evidence that the two are equal.")
    return "\n".join(lines)


def fingerprint(runs: list[Run]) -> str:
    """SHA-256 over every probability file read, with its run and file name, in order."""
    digest = hashlib.sha256()
    for run in runs:
        for path in run.files:
            digest.update(f"{run.name}/{path.name}\n".encode())
            digest.update(path.read_bytes())
    return f"sha256:{digest.hexdigest()}"


def runs_folder(run, runs_dir: str = "") -> Path:
    """Where the detection runs to combine are, for this `run` (`nbutils.run.setup.Run`):
    `runs_dir` where it is set (on Kaggle, a relative one under /kaggle/working, as any run
    folder); else on Kaggle the attached detection kernels' outputs, gathered into one folder
    (`kaggle_runs_dir`); else the detect_ai_text runs of the same profile beside this run's own
    (`default_runs_dir`)."""
    from nbutils.run import environment

    if runs_dir:
        return environment.run_folder(runs_dir, run.env)
    if run.env.name == "kaggle":  # each detection run is a kernel of its own, attached as an input
        return kaggle_runs_dir(run.env, run.final, run.project)
    return default_runs_dir(run.final, run.project)


METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc")


def write_record(run, runs_dir: str | Path, runs: list[Run], left_out: dict, tables: dict[str, SplitScores],
                 results: dict[str, dict], best: str, stacker: dict, seconds: float,
                 intervals: dict[str, dict], paired: list[dict]) -> dict:
    """The run's record (`nbutils.run.record`), written into the run folder and returned.

    Its top-level metrics are the stacker's (this project's model, `stacker`: its summary);
    every method's are under `metrics["methods"]`; the best single model (`best`, chosen on
    validation ROC AUC), the mean and the rank average are its baselines. The data fingerprint
    hashes the probability files read; the split hashes are those of the essays' row ids, the
    same as in the detection runs' records. The stacker's training rows are the validation
    split's; it trains in `seconds`, one weight per run and an intercept, and has no epochs.

    `intervals` (`test_intervals`): the stacker's ROC AUC and accuracy intervals are the
    record's `metrics.intervals`, every method's sit beside its results; `paired`
    (`paired_comparisons`) goes in as `metrics.paired`. `metrics.measured_on` names the split
    of each published result: the test split, as the runs' records name it ("test", or "test
    (prompts unseen in training)" where they split by prompt); thresholds and choices are no results.
    """
    from nbutils.run import record

    names = [r.name for r in runs]
    rows = len(tables["validation"].labels)
    # The test split as the runs' own records name it (split by prompt or not: the prompt column in
    # the probability files says which prompt an essay has, not how the runs split).
    named = {(r.record.get("metrics", {}).get("measured_on") or {}).get("roc_auc") for r in runs}
    test_split = named.pop() if len(named) == 1 and None not in named else "test"
    methods = {name: {**result, "intervals": intervals[name]} for name, result in results.items()}
    return record.write(
        run, task="ai-text-detection-ensemble", model=f"stacked logistic regression over {', '.join(names)}",
        data={"source": str(runs_dir), "fingerprint": fingerprint(runs),
              "train": rows, "validation": rows, "test": len(tables["test"].labels),
              "split_hashes": {s: record.split_hash({"row_id": tables[s].row_ids}) for s in SPLITS},
              "runs": {r.name: {"project": r.record.get("project"), "model": r.record.get("model"),
                                "roc_auc": r.record.get("metrics", {}).get("roc_auc")} for r in runs},
              "left_out": left_out},
        metrics={**{k: results[STACK][k] for k in METRIC_NAMES}, "threshold": results[STACK]["threshold"],
                 "intervals": intervals[STACK], "measured_on": {k: test_split for k in METRIC_NAMES},
                 "methods": methods, "best_single": best, "stacker": stacker, "paired": paired},
        primary_metric="roc_auc",
        baselines={"best_single_model": {**methods[best], "run": best}, MEAN: methods[MEAN], RANK: methods[RANK]},
        train={"runtime_s": round(seconds, 3), "samples_per_s": round(rows / max(seconds, 1e-9), 3),
               "epochs": None, "processes": 1},
        parameters={"trainable": len(names) + 1, "total": len(names) + 1})
