"""Dialogue summarization with a sequence-to-sequence model: prompts, targets, lengths, generation.

The original FLAN-T5 notebook built its training targets from the input dialogue (so the model
learned to copy its prompt), let generation stop at transformers' default of 20 tokens, and never
scored the test split. The pieces here make each of those explicit and testable:
`tokenize_function` takes the targets from the summary column, `choose_max_length` picks
the token limits from the data (`nbutils.run.row_report.length_report` says what they cut), `set_generation`
fixes the generation length on the model itself (so the Trainer's evaluation, `predict` and a
later `generate` all use it), and `generation_stats` reports how long the summaries came out and
how many ran into the limit.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TEMPLATE = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"


def build_prompts(dialogues, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """The model's inputs: the instruction template with each dialogue filled in."""
    return [template.format(dialogue=dialogue) for dialogue in dialogues]


def tokenize_function(tokenizer, template: str, dialogue_column: str, summary_column: str,
                      max_source_length: int, max_target_length: int):
    """A `datasets.map(batched=True)` function: prompt + dialogue -> `input_ids`, and the
    **summary** -> `labels`. Nothing is padded here: `DataCollatorForSeq2Seq` pads each batch
    and fills label padding with -100, which the loss ignores."""
    def tokenize(batch):
        features = tokenizer(build_prompts(batch[dialogue_column], template),
                             max_length=max_source_length, truncation=True)
        features["labels"] = tokenizer(text_target=list(batch[summary_column]),
                                       max_length=max_target_length, truncation=True)["input_ids"]
        return features

    return tokenize


def choose_max_length(lengths, percentile: float, cap: int = 0, multiple_of: int = 8) -> int:
    """The `percentile`-th percentile of `lengths`, rounded up to a multiple of `multiple_of`
    (friendlier to GPU kernels), and at most `cap` when `cap` is positive."""
    if not 0 < percentile <= 100:
        raise ValueError(f"length_percentile must be in (0, 100], got {percentile!r}")
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        raise ValueError("cannot choose a length from no examples")
    limit = int(np.ceil(np.percentile(lengths, percentile) / multiple_of) * multiple_of)
    return min(limit, cap) if cap > 0 else limit


def set_generation(model, max_new_tokens: int, num_beams: int = 1):
    """Fix the generation length and beam count on the model's own `generation_config`.

    Without this, `generate` (and Seq2SeqTrainer's evaluation) stops at the default
    `max_length` of 20 tokens, cutting most summaries mid-sentence. Setting it on the model
    means every later call uses it and `save_pretrained` stores it.
    """
    if max_new_tokens < 1:
        raise ValueError(f"generation_max_new_tokens must be at least 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}")
    config = model.generation_config
    if model.config.is_encoder_decoder:
        # Expressed as max_length, which for an encoder-decoder counts decoder tokens from the one
        # start token: Seq2SeqTrainer fills the config's unset fields with defaults (max_length
        # 20), and max_new_tokens beside that would warn on every generate call.
        config.max_new_tokens = None
        config.max_length = max_new_tokens + 1
    else:
        config.max_new_tokens = max_new_tokens
        config.max_length = None
    config.num_beams = num_beams
    config.early_stopping = True if num_beams > 1 else False
    return config


def _rows_without_padding(ids, pad_id: int) -> list[np.ndarray]:
    """Generated token ids per row, without the -100 / pad fill (T5 also starts with pad)."""
    ids = np.asarray(ids)
    return [row[(row != -100) & (row != pad_id)] for row in ids]


def decode_generated(tokenizer, ids) -> list[str]:
    """Text of generated ids, as `Seq2SeqTrainer.predict` returns them (padded with -100)."""
    ids = np.where(np.asarray(ids) == -100, tokenizer.pad_token_id, np.asarray(ids))
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generation_stats(ids, tokenizer, max_new_tokens: int) -> dict:
    """Mean and max generated length in tokens (up to, not counting, </s>), and the fraction
    of outputs that never produced </s> before `max_new_tokens`: cut off by the limit."""
    lengths, cut = [], 0
    for row in _rows_without_padding(ids, tokenizer.pad_token_id):
        eos = np.flatnonzero(row == tokenizer.eos_token_id)
        lengths.append(int(eos[0]) if eos.size else len(row))
        cut += int(eos.size == 0 and len(row) >= max_new_tokens)
    lengths = np.asarray(lengths)
    return {"gen_len_mean": round(float(lengths.mean()), 2) if lengths.size else 0.0,
            "gen_len_max": int(lengths.max()) if lengths.size else 0,
            "cut_at_limit": round(cut / max(len(lengths), 1), 4)}


def check_prediction_order(label_ids, expected_labels) -> None:
    """Stop if `Trainer.predict` returned its rows in another order than the data set's.

    Predictions are paired with references by position. transformers 5 evaluates in
    length-grouped (shuffled) order when `train_sampling_strategy="group_by_length"`, which
    would silently pair each summary with another dialogue's reference; the label ids that
    come back with the predictions show whether that happened.
    """
    label_ids = np.asarray(label_ids)
    if len(label_ids) != len(expected_labels):
        raise RuntimeError(f"predict returned {len(label_ids)} rows for {len(expected_labels)} examples")
    for i, expected in enumerate(expected_labels):
        row = label_ids[i]
        got = row[row != -100][:len(expected)].tolist()
        if got != list(expected):
            raise RuntimeError(f"predictions are not in the data set's order (row {i} carries another "
                               "example's labels): do not use train_sampling_strategy='group_by_length' "
                               "with predict, or realign the predictions")


# FLAN-T5 is no zero-shot summarizer of SAMSum: SAMSum is one of the Flan 2021 tasks
# (`samsum_10templates`; Wei et al. 2021, "Finetuned Language Models Are Zero-Shot Learners",
# summarization cluster), and the Flan 2022 collection FLAN-T5 was instruction-tuned on
# (Chung et al. 2022; Longpre et al. 2023) includes the Flan 2021 tasks. So the model before
# fine-tuning has seen SAMSum's training dialogues and may have seen its summaries' style; it is
# the "untuned" model, not a zero-shot one.
UNTUNED_KEY = "untuned"  # the run record's baseline key (and predictions column) for it


def untuned_label(model_name: str) -> str:
    """How tables name the model before fine-tuning: "untuned FLAN-T5" for a FLAN-T5
    checkpoint (never "zero-shot": it was instruction-tuned on SAMSum), else "untuned model"."""
    return "untuned FLAN-T5" if "flan-t5" in str(model_name).lower() else "untuned model"


# Placeholders SAMSum puts where a chat had an attachment: kept (the model should learn to read
# past them), noted in the data report.
PLACEHOLDER = "<file_"


def clean_dialogues(splits, ledger, dialogue_column: str, summary_column: str, id_column: str = ""):
    """Apply the malformed-row rule (`nbutils.run.row_report`) to every split of dialogue data.

    Repaired: `\\r\\n` line ends (SAMSum's) become `\\n`. Dropped: a missing or blank dialogue or
    summary, and a dialogue already seen (in this split or an earlier one, train first: a copy
    on both sides of the split would leak). Noted and kept: `<file_photo>`-style placeholders.
    Rows are named by `id_column` (or their position) in the ledger.
    """
    from datasets import DatasetDict

    from nbutils.run.row_report import is_blank, normalise_line_ends

    seen: set = set()
    cleaned = {}
    for name, split in splits.items():
        ledger.add_read(name, len(split))
        ids = list(split[id_column]) if id_column else list(range(len(split)))
        keep, dialogues, summaries = [], [], []
        for i, (dialogue, summary) in enumerate(zip(split[dialogue_column], split[summary_column])):
            row_id = ids[i]
            if is_blank(dialogue) or is_blank(summary):
                column = dialogue_column if is_blank(dialogue) else summary_column
                ledger.drop(name, row_id, f"empty or missing {column!r}")
                continue
            dialogue, fixed_dialogue = normalise_line_ends(dialogue)
            summary, fixed_summary = normalise_line_ends(summary)
            if dialogue in seen:
                ledger.drop(name, row_id, f"duplicate {dialogue_column!r} (an earlier row has the same dialogue)")
                continue
            seen.add(dialogue)
            if fixed_dialogue or fixed_summary:
                ledger.repair(name, row_id, "\\r\\n line ends normalised to \\n")
            if PLACEHOLDER in dialogue:
                ledger.note(name, row_id, "<file_...> placeholders (attachments), kept")
            keep.append(i)
            dialogues.append(dialogue)
            summaries.append(summary)
        kept = split.select(keep)
        kept = kept.remove_columns([dialogue_column, summary_column])
        cleaned[name] = kept.add_column(dialogue_column, dialogues).add_column(summary_column, summaries)
    return DatasetDict(cleaned)


def write_record(run, trainer, train_output, *, splits, fingerprint: str, lengths: dict, report: dict,
                 metrics: dict, baselines: dict, parameters: dict, memory_estimate: dict | None = None) -> dict:
    """The run's record (`nbutils.run.record`): the data (source, fingerprint, split sizes and
    hashes, token lengths, the data report), the test metrics with ROUGE-Lsum the headline, the
    untuned model first among the baselines (the summary table compares with the first), and
    how training went. Written into the run folder; returned."""
    from nbutils.run import record

    config = run.config
    return record.write(
        run, task="dialogue-summarization", model=config["model_name"],
        data={"source": config["data_source"], "fingerprint": fingerprint, "train": len(splits["train"]),
              "split_hashes": record.split_hashes(splits, config.get("id_column") or None),  # ids, or row contents
              "validation": len(splits["validation"]), "test": len(splits["test"]),
              "evaluated_split": "test", "lengths": lengths, "report": report},
        metrics=metrics, primary_metric="rougeLsum", baselines=baselines,
        train=record.trained(run, trainer, train_output, memory_estimate), parameters=parameters)
