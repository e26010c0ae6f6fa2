"""Conclusion inputs built from recorded smoke runs of finetuning_strategies: one from before
the test intervals (`tests/data/strategies_run.json`), the run itself and variants that switch
each finding on and off, and one with each strategy's test interval and paired comparison with
full fine-tuning (`tests/data/strategies_run_intervals.json`, issue 27). `tests/data/
strategies_conclusions.json` holds what `study.conclusion` wrote for each: for the first run's
cases, the text from before it was split into one function per finding, with the one line on
what the seeds do not vary added; for the second run's, the conclusion its notebook printed."""

import copy
import itertools
import json
from pathlib import Path

DATA = Path(__file__).parent / "data"


def recorded_run(name: str = "strategies_run.json") -> dict:
    return json.loads((DATA / name).read_text())


def _one_seed(results):
    return {n: {k: v for k, v in s.items() if k not in ("seeds", "spread", "seed_values")}
            for n, s in results.items()}


def _ranked(results):
    """Scores far apart, so the ranking (not the tie) sentences are written."""
    wide = copy.deepcopy(_one_seed(results))
    for i, result in enumerate(wide.values()):
        result["validation"]["roc_auc"] = 0.9 - 0.05 * i
        result["test"]["roc_auc"] = 0.88 - 0.04 * i
    return wide


def cases() -> list[dict]:
    """(name, args, kwargs) for `study.conclusion`."""
    run = recorded_run()
    results, before, curve, head = run["results"], run["before"], run["curve"], run["informative_head"]
    out = [("recorded smoke run (2 seeds)", (results, before, curve, head), {}),
           ("uninformative head", (results, before, curve, False), {}),
           ("no curve", (results, before, None, True), {}),
           ("one seed", (_one_seed(results), before, curve, True), {})]
    for k in (1, 2, 3):
        for subset in itertools.combinations(results, k):
            out.append((f"only {'+'.join(subset)}", ({n: results[n] for n in subset}, before, None, True), {}))
    wide = _ranked(results)
    out.append(("ranked, one seed", (wide, before, curve, True), {}))
    out.append(("ranked, tie=0.06", (wide, before, curve, True), {"tie": 0.06}))
    forgetless = copy.deepcopy(wide)
    for result in forgetless.values():
        result.pop("forgetting", None)
    out.append(("no forgetting", (forgetless, before, {"full": {"10": 0.6, "40": 0.8},
                                                       "lora": {"10": 0.7, "40": 0.75}}, True), {}))
    out.append(("other metric", (wide, before, None, True), {"metric": "accuracy", "metric_name": "accuracy"}))
    fit = copy.deepcopy(wide)
    fit["full_high_lr"]["overfitting"] = {"final_gap": 0.3, "validation_rise": 0.2, "overfit": True, "tolerance": 0.05}
    fit["full"]["overfitting"] = {"final_gap": 0.01, "validation_rise": 0.1, "overfit": False, "tolerance": 0.05}
    out.append(("overfit at the high rate", (fit, before, None, True), {}))
    paired = recorded_run("strategies_run_intervals.json")
    results, before, curve, head = paired["results"], paired["before"], paired["curve"], paired["informative_head"]
    out.append(("recorded smoke run with intervals (2 seeds)", (results, before, curve, head), {}))
    out.append(("intervals, only full+lora", ({n: results[n] for n in ("full", "lora")}, before, None, head), {}))
    out.append(("intervals, only frozen+lora (no full fine-tuning to pair with)",
                ({n: results[n] for n in ("frozen", "lora")}, before, None, head), {}))
    out.append(("intervals, accuracy concluded on", (results, before, None, head),
                {"metric": "accuracy", "metric_name": "accuracy"}))
    return out
