"""Instruction tuning with TRL (notebooks/instruction_tune.ipynb).

`instructions` (instruction data sets: formats, templates, malformed rows), `causal_lm`
(completion-only labels, packing checks and generation for causal language models). Here: the
batching the run ended with (`batching_summary`) and its run record (`write_record`).
"""

import math


def batching_summary(decision, trainer, examples: int, batch_size: int, gradient_accumulation_steps: int) -> dict:
    """How the `SFTTrainer` batches (the record's `data.batching`): the batching decision
    (`nbutils.batching.sft_batching`) and its reason, the training rows (packed rows are fewer
    than the `examples`), rows per optimizer step and optimizer steps per epoch over all
    processes, and the steps the recipe's batches of examples (`batch_size` x
    `gradient_accumulation_steps` per process) would take: packing keeps about that many."""
    args = trainer.args
    rows = len(trainer.train_dataset)
    rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return {"packing": decision.packing, "reason": decision.reason, "rows": rows, "rows_per_step": rows_per_step,
            "steps_per_epoch": math.ceil(rows / rows_per_step),
            "recipe_steps_per_epoch": math.ceil(examples / (batch_size * gradient_accumulation_steps * args.world_size))}


def write_record(run, trainer, train_output, *, train_pairs, eval_pairs, fmt: str, fingerprint: str, ledger,
                 report: dict, lengths: dict, label_checks: dict, batching: dict, metrics: dict, baselines: dict,
                 parameters: dict, memory_estimate: dict | None = None) -> dict:
    """The run's record (`nbutils.run.record`): the data (source, format, fingerprint, the
    training and held-out sizes and hashes, the rows dropped, the data report, the training
    examples' token lengths, the label checks and the batching), the held-out scores with
    perplexity the headline and those before training as the baseline, and how training went
    (throughput in examples, not packed rows). Written into the run folder; returned. Every
    process calls it."""
    from nbutils.run import record

    config = run.config
    train = record.trained(run, trainer, train_output, memory_estimate)
    if batching["packing"]:  # the Trainer counts packed rows as its samples: count examples
        train["samples_per_s"] = round(train["samples_per_s"] * len(train_pairs) / batching["rows"], 3)
    return record.write(
        run, task="instruction-tuning", model=config["model_name"],
        data={"source": config["data_source"], "fingerprint": fingerprint, "train": len(train_pairs),
              "validation": 0, "test": len(eval_pairs), "format": fmt,
              "split_hashes": record.split_hashes({"train": train_pairs, "test": eval_pairs}, None),  # row contents
              "skipped_rows": ledger.counts()["dropped"], "report": report, "lengths": lengths,
              "label_checks": label_checks, "batching": batching},
        metrics=metrics, primary_metric="eval_perplexity", baselines=baselines, train=train, parameters=parameters)
