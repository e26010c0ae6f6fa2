"""Instruction tuning with TRL (notebooks/instruction_tune.ipynb).

`instructions` (instruction data sets: formats, templates, malformed rows), `causal_lm`
(completion-only labels, packing checks and generation for causal language models). Here: the
batching the run ended with (`batching_summary`), the checkpoint the validation loss chose
(`chosen_checkpoint`) and the run record (`write_record`).
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


# The split every held-out score of the record was measured on, as the model card names it: a
# slice of the data set's train split (guanaco-llama2-1k and Capybara ship no other), held out
# before training, never trained on, and scored after training only (and before it, as the
# baseline); the validation split that chose the step is another slice.
HELD_OUT = "held-out slice of train"
# The record's evaluation results: the generation figures (stop rate, answer length) come from a
# handful of prompts and are no measurement to publish; eval_tokens is a count.
EVALUATION_METRICS = ("eval_loss", "eval_perplexity")


def chosen_checkpoint(state) -> dict:
    """Which checkpoint the run ended with (`load_best_model_at_end` on the validation loss): its
    step, its validation loss, and the last step trained, from a Trainer's `state`."""
    best = state.best_model_checkpoint
    evaluations = [entry for entry in state.log_history if "eval_loss" in entry]
    return {"criterion": "validation loss (lowest)", "step": int(str(best).rsplit("-", 1)[1]) if best else None,
            "validation_loss": state.best_metric, "last_step": state.global_step,
            "evaluations": len(evaluations)}


def lora_targets(model) -> list[str]:
    """The layer names (last part, e.g. `q_proj`) that carry a LoRA adapter in `model`: what
    `lora_target_modules` resolved to (PEFT's "all-linear": every linear layer but the output
    layer). Empty without an adapter (full fine-tuning)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if hasattr(module, "lora_A") and name})


def held_out_metrics(scores: dict, intervals: dict) -> dict:
    """The record's metrics from `causal_lm.token_loss` scores (the per-example arrays left out)
    and their `causal_lm.loss_intervals`, with the split each result was measured on."""
    from nbutils.run import record

    metrics = {"eval_loss": scores["loss"], "eval_perplexity": scores["perplexity"], "eval_tokens": scores["tokens"]}
    metrics[record.INTERVALS] = intervals
    metrics[record.MEASURED_ON] = {name: HELD_OUT for name in EVALUATION_METRICS}
    return metrics


def write_record(run, trainer, train_output, *, train_pairs, validation_pairs, eval_pairs, fmt: str,
                 fingerprint: str, ledger, report: dict, lengths: dict, label_checks: dict, batching: dict,
                 metrics: dict, baselines: dict, parameters: dict, chosen: dict,
                 memory_estimate: dict | None = None) -> dict:
    """The run's record (`nbutils.run.record`): the data (source, format, fingerprint, the
    training, validation and held-out sizes and hashes, the rows dropped, the data report, the
    training examples' token lengths, the label checks and the batching), the held-out scores
    (`held_out_metrics`: perplexity the headline, with its interval and split) and those before
    training as the baseline, and how training went (throughput in examples, not packed rows;
    `train.chosen_checkpoint`: the step the validation loss chose; `parameters.lora_targets`:
    the layers that got an adapter). Written into the run folder; returned. Every process calls it."""
    from nbutils.run import record

    config = run.config
    train = record.trained(run, trainer, train_output, memory_estimate, chosen_checkpoint=chosen)
    if batching["packing"]:  # the Trainer counts packed rows as its samples: count examples
        train["samples_per_s"] = round(train["samples_per_s"] * len(train_pairs) / batching["rows"], 3)
    return record.write(
        run, task="instruction-tuning", model=config["model_name"],
        data={"source": config["data_source"], "fingerprint": fingerprint, "train": len(train_pairs),
              "validation": len(validation_pairs), "test": len(eval_pairs), "test_split": HELD_OUT, "format": fmt,
              "split_hashes": record.split_hashes({"train": train_pairs, "validation": validation_pairs,
                                                   "test": eval_pairs}, None),  # row contents
              "skipped_rows": ledger.counts()["dropped"], "report": report, "lengths": lengths,
              "label_checks": label_checks, "batching": batching},
        metrics=metrics, primary_metric="eval_perplexity", baselines=baselines, train=train,
        parameters={**parameters, "lora_targets": lora_targets(trainer.model)})
