"""The detection notebook's own helpers (detect_ai_text): its run record.

What the detection notebook shares with others (splits, metrics, thresholds, the TF-IDF
baseline, the optional techniques) lives in the library (`nbutils.data`, `nbutils.metrics`,
`nbutils.baselines`, `nbutils.remedies`); the ensemble notebook reads the records and the
probability files this one writes (`nbutils.tasks.ensemble`).
"""

from __future__ import annotations

TASK = "ai-text-detection"
PRIMARY_METRIC = "roc_auc"


def write_record(run, trainer, train_output, *, splits, train_rows, fingerprint: str, split_hashes: dict,
                 truncated: float, overlap, report: dict, metrics: dict, threshold: float, baselines: dict,
                 techniques: dict, parameters: dict, out_of_domain=None, memory_estimate: dict | None = None) -> dict:
    """The run's record (`nbutils.run.record`), written into the run folder and returned.

    - data: the source and its fingerprint, the split sizes and the hashes of their row ids, the
      share of training essays `max_length` truncates, the overlap removed from the training
      rows and the data report; where they differ from the training split, the training rows
      (extra sources, augmentation, balancing), each extra source's rows, and the size of a
      held-out domain (`out_of_domain`);
    - metrics: the test metrics at the decision `threshold`, and where it was chosen; each
      optional technique's results (`techniques`: cv, search, by_group, out_of_domain,
      layer_groups), those that ran;
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
    return record.write(
        run, task=TASK, model=config["model_name"], data=data,
        metrics={**metrics, "threshold": threshold, "threshold_chosen_on": chosen_on,
                 **{name: result for name, result in techniques.items() if result is not None}},
        primary_metric=PRIMARY_METRIC, baselines=baselines,
        train=record.trained(run, trainer, train_output, memory_estimate), parameters=parameters)
