"""The detection notebook's own helpers (detect_ai_text): its run record.

What the detection notebook shares with others (splits, metrics, thresholds, the TF-IDF
baseline, the optional techniques) lives in the library (`nbutils.data`, `nbutils.metrics`,
`nbutils.baselines`, `nbutils.remedies`); the ensemble notebook reads the records and the
probability files this one writes (`nbutils.tasks.ensemble`).
"""

from __future__ import annotations

TASK = "ai-text-detection"
PRIMARY_METRIC = "roc_auc"
TEST_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")  # the real evaluation results


def test_split_name(grouped: bool, domain_held_out: bool = False) -> str:
    """The test split in words a reader reads right: split at random, its essays are new but
    their prompts are not; split by prompt, its prompts were never trained on; and beside a
    held-out domain, its essays still come from the sources (generators, students) training saw."""
    if not grouped:
        return "test"
    return "test (unseen prompts, same sources)" if domain_held_out else "test (prompts unseen in training)"


def by_prompt(labels, probabilities, baseline_probabilities, prompts, threshold: float,
              baseline_threshold: float) -> dict[str, dict]:
    """Test metrics per prompt (`remedies.group_metrics.metrics_by_group`), each with the TF-IDF
    baseline's ROC AUC on the same prompt: with only a few prompts in test, the overall score is
    an average over them, and one easy prompt can carry it."""
    from nbutils.remedies.group_metrics import metrics_by_group

    model = metrics_by_group(labels, probabilities, prompts, threshold)
    baseline = metrics_by_group(labels, baseline_probabilities, prompts, baseline_threshold)
    return {prompt: {**scores, "tfidf_logreg_roc_auc": baseline[prompt]["roc_auc"]}
            for prompt, scores in model.items()}


def split_repeat_summary(repeats: list[dict]) -> dict:
    """Mean and standard deviation (ddof 1) of ROC AUC over split-seed repeats, each repeat
    ({"split_seed", "roc_auc", ...}) kept: how much the score moves with which prompts land in test."""
    import numpy as np

    if not repeats:
        raise ValueError("no split-seed repeats to summarise")
    summary = {"runs": len(repeats), "split_seeds": [r["split_seed"] for r in repeats], "repeats": repeats}
    for key in ("roc_auc", "tfidf_logreg_roc_auc"):
        values = np.asarray([r[key] for r in repeats if r.get(key) is not None], dtype=float)
        if values.size:
            summary[key] = {"mean": float(values.mean()),
                            "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0}
    return summary


def write_record(run, trainer, train_output, *, splits, train_rows, fingerprint: str, split_hashes: dict,
                 truncated: float, overlap, report: dict, metrics: dict, threshold: float, baselines: dict,
                 techniques: dict, parameters: dict, intervals: dict, vs_baseline: dict | None = None,
                 out_of_domain=None, memory_estimate: dict | None = None) -> dict:
    """The run's record (`nbutils.run.record`), written into the run folder and returned.

    - data: the source and its fingerprint, the split sizes and the hashes of their row ids, the
      share of training essays `max_length` truncates, the overlap removed from the training
      rows and the data report; where they differ from the training split, the training rows
      (extra sources, augmentation, balancing), each extra source's rows, and the size of a
      held-out domain (`out_of_domain`);
    - metrics: the test metrics at the decision `threshold`, and where it was chosen; their
      bootstrap `intervals` (`metrics.classification_intervals`); `measured_on`, the split of
      each real evaluation result (the test metrics, and the out-of-domain ROC AUC where a
      domain was held out; never the threshold); `vs_baseline`, the paired bootstrap of the
      model's ROC AUC against the baseline's on the same test rows; each optional technique's
      results (`techniques`: by_prompt, cv, search, by_group, out_of_domain, layer_groups,
      split_repeats), those that ran;
    - ROC AUC the headline, `baselines` (the TF-IDF model) beside it, and how training went.
    """
    from nbutils.remedies import sources
    from nbutils.run import record

    config = run.config
    data = {"source": config["data_source"], "fingerprint": fingerprint, "train": len(splits["train"]),
            "validation": len(splits["validation"]), "test": len(splits["test"]),
            "truncated_fraction": truncated, "split_hashes": split_hashes, "overlap": overlap, "report": report}
    if len(train_rows) != len(splits["train"]):
        data["training_rows"] = len(train_rows)
    if config.get("extra_sources"):
        data["sources"] = sources.source_counts(train_rows)
    if out_of_domain is not None:
        data["out_of_domain"] = len(out_of_domain)
    chosen_on = "validation" if config.get("threshold_from_validation", True) else "fixed"
    test_split = test_split_name(bool(config.get("group_column")), out_of_domain is not None)
    measured_on = {name: test_split for name in TEST_METRICS}
    flat = {}
    ood = techniques.get("out_of_domain")
    if ood is not None and ood["model"]["roc_auc"] == ood["model"]["roc_auc"]:  # (not NaN: both classes)
        # its ROC AUC under a flat name, so the model card can publish it as what it is
        flat["out_of_domain_roc_auc"] = ood["model"]["roc_auc"]
        measured_on["out_of_domain_roc_auc"] = f"out-of-domain test ({ood['column']} in {ood['values']})"
    return record.write(
        run, task=TASK, model=config["model_name"], data=data,
        metrics={**metrics, **flat, "threshold": threshold, "threshold_chosen_on": chosen_on,
                 "intervals": intervals, "measured_on": measured_on,
                 **({"vs_baseline": vs_baseline} if vs_baseline is not None else {}),
                 **{name: result for name, result in techniques.items() if result is not None}},
        primary_metric=PRIMARY_METRIC, baselines=baselines,
        train=record.trained(run, trainer, train_output, memory_estimate), parameters=parameters)
