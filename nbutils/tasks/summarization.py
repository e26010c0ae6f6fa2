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


# The split a dialogue stays in when it appears in several: the official test split is never cut
# (its scores stay comparable with published ones), then validation; train gives way to both.
SPLIT_PRECEDENCE = ("test", "validation", "train")
REPEATS = "repeats a {kept} dialogue (kept there)"  # the row leaves the lower-ranked split


def _precedence(name: str) -> int:
    return SPLIT_PRECEDENCE.index(name) if name in SPLIT_PRECEDENCE else len(SPLIT_PRECEDENCE)


def _dialogue_key(dialogue) -> str:
    from nbutils.run.row_report import normalise_line_ends

    return normalise_line_ends(dialogue)[0]


def clean_dialogues(splits, ledger, dialogue_column: str, summary_column: str, id_column: str = ""):
    """Apply the malformed-row rule (`nbutils.run.row_report`) to every split of dialogue data,
    and keep the splits apart without cutting the test split.

    Repaired: `\\r\\n` line ends (SAMSum's) become `\\n`. Dropped: a missing or blank dialogue or
    summary. Noted and kept: `<file_photo>`-style placeholders.

    A dialogue in two splits would leak; it stays in the split that ranks first in
    `SPLIT_PRECEDENCE` (test, then validation, then train) and is removed from the others. So
    the test split is the source's, whole (SAMSum: all 819 dialogues, as published results score
    them); train loses its copies of test and validation dialogues (it is what the model learns
    from); validation loses its copies of test dialogues, because validation chooses the
    checkpoint and a test dialogue there would let the test rows steer that choice. A dialogue
    repeated within train or validation keeps its first copy; repeats within the test split are
    kept (it is scored as shipped). Every removal is in the ledger with its reason, counted in the
    data report. Rows are named by `id_column` (or their position) in the ledger.
    """
    from datasets import DatasetDict

    from nbutils.run.row_report import is_blank, normalise_line_ends

    # Which split each usable dialogue belongs to, before any row is judged.
    owner: dict = {}
    for name in sorted(splits, key=_precedence):
        for dialogue, summary in zip(splits[name][dialogue_column], splits[name][summary_column]):
            if not (is_blank(dialogue) or is_blank(summary)):
                owner.setdefault(_dialogue_key(dialogue), name)
    cleaned = {}
    for name, split in splits.items():
        ledger.add_read(name, len(split))
        ids = list(split[id_column]) if id_column else list(range(len(split)))
        seen: set = set()
        keep, dialogues, summaries = [], [], []
        for i, (dialogue, summary) in enumerate(zip(split[dialogue_column], split[summary_column])):
            row_id = ids[i]
            if is_blank(dialogue) or is_blank(summary):
                column = dialogue_column if is_blank(dialogue) else summary_column
                ledger.drop(name, row_id, f"empty or missing {column!r}")
                continue
            dialogue, fixed_dialogue = normalise_line_ends(dialogue)
            summary, fixed_summary = normalise_line_ends(summary)
            kept_in = owner[dialogue]
            if kept_in != name and _precedence(kept_in) < _precedence(name):
                ledger.drop(name, row_id, REPEATS.format(kept=kept_in, split=name))
                continue
            if dialogue in seen and _precedence(name) != 0:
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


def seen_in_training(test_dialogues, source_splits, dialogue_column: str,
                     training=("train", "validation")) -> np.ndarray:
    """For each test dialogue, whether the source's `training` splits (as read, before
    `clean_dialogues` removed their copies) hold the same dialogue.

    Removing the copies from train keeps them out of this run's fine-tuning, but not out of the
    checkpoint it starts from: FLAN-T5 was instruction-tuned on SAMSum's training dialogues. The
    score on the test dialogues *not* seen there is the one no training run has seen the input of
    (validation counts too: it chose checkpoints)."""
    from nbutils.run.row_report import is_blank

    known = {_dialogue_key(d) for name in training if name in source_splits
             for d in source_splits[name][dialogue_column] if not is_blank(d)}
    return np.array([_dialogue_key(d) in known for d in test_dialogues], dtype=bool)


def cross_split_counts(report: dict) -> dict:
    """{split: rows removed because they repeat a dialogue of a split that keeps it}, from the
    data report (`nbutils.run.row_report.data_report`)."""
    counts: dict = {}
    for reason, entry in report.get("dropped", {}).items():
        if reason.startswith("repeats a "):
            for split, n in entry.get("by_split", {}).items():
                counts[split] = counts.get(split, 0) + n
    return counts


# --- scores with their uncertainty ------------------------------------------------------------

PRIMARY = "rougeLsum"


def unseen_key(key: str) -> str:
    """The record's name for `key` on the test dialogues unseen in training: `rougeLsum_unseen`."""
    return "_".join((key, "unseen"))


MEASURED_ON = {"all": "test", "unseen": "test (dialogues unseen in training)"}


def scores_with_intervals(rows: dict, unseen, **bootstrap) -> dict:
    """Mean ROUGE over all test dialogues (the headline, comparable with published figures) and
    over the dialogues unseen in training (`rouge1_unseen`, ...), each with a bootstrap interval
    over the test dialogues it averages (`nbutils.metrics.bootstrap_interval`), and the split
    each was measured on. `rows`: per-dialogue scores (`nbutils.metrics.rouge_per_row`)."""
    from nbutils import metrics

    unseen = np.asarray(unseen, dtype=bool)
    out, intervals, measured_on = {}, {}, {}
    for key in metrics.ROUGE_KEYS:
        values = np.asarray(rows[key], dtype=np.float64)
        if values.shape != unseen.shape:
            raise ValueError(f"{values.size} scores for {unseen.size} test dialogues")
        out[key] = sum(values.tolist()) / len(values)
        intervals[key] = metrics.bootstrap_interval(np.mean, values, **bootstrap)
        measured_on[key] = MEASURED_ON["all"]
        if unseen.any():
            subset = values[unseen]
            out[unseen_key(key)] = sum(subset.tolist()) / len(subset)
            intervals[unseen_key(key)] = metrics.bootstrap_interval(np.mean, subset, **bootstrap)
            measured_on[unseen_key(key)] = MEASURED_ON["unseen"]
    return {**out, "intervals": intervals, "measured_on": measured_on}


def paired_rouge_difference(rows_a, rows_b, key: str = PRIMARY, **bootstrap) -> dict:
    """Mean ROUGE of system a minus system b on the same test dialogues, with a paired bootstrap
    interval (`nbutils.metrics.paired_mean_difference`: both scored on the same redrawn dialogues)."""
    from nbutils import metrics

    return metrics.paired_mean_difference(rows_a[key], rows_b[key], **bootstrap)


def headline_line(name: str, scores: dict, n_all: int, n_unseen: int, key: str = PRIMARY) -> str:
    """`fine-tuned: test ROUGE-Lsum 0.412 [0.401, 0.424] on all 819 test dialogues; 0.398 [...] on
    the 773 unseen in training (95% bootstrap intervals over test dialogues)`."""
    from nbutils.metrics import format_interval

    level = scores["intervals"][key]["level"]
    line = f"{name}: test {key} {format_interval(scores[key], scores['intervals'][key])} on all {n_all} test dialogues"
    if unseen_key(key) in scores:
        unseen = unseen_key(key)
        line += (f"; {format_interval(scores[unseen], scores['intervals'][unseen])} on the "
                 f"{n_unseen} unseen in training")
    return line + f" ({level:.0%} bootstrap intervals over test dialogues)"


def write_record(run, trainer, train_output, *, splits, fingerprint: str, lengths: dict, report: dict,
                 metrics: dict, baselines: dict, parameters: dict, test_seen_in_training: int = 0,
                 memory_estimate: dict | None = None) -> dict:
    """The run's record (`nbutils.run.record`): the data (source, fingerprint, split sizes and
    hashes, how many test dialogues the source's train or validation split also holds and how many
    rows were removed from those splits for it, token lengths, the data report), the test metrics
    with ROUGE-Lsum the headline (with intervals and the split each was measured on), the
    untuned model first among the baselines (the summary table compares with the first), and
    how training went. Written into the run folder; returned."""
    from nbutils.run import record

    config = run.config
    return record.write(
        run, task="dialogue-summarization", model=config["model_name"],
        data={"source": config["data_source"], "fingerprint": fingerprint, "train": len(splits["train"]),
              "split_hashes": record.split_hashes(splits, config.get("id_column") or None),  # ids, or row contents
              "validation": len(splits["validation"]), "test": len(splits["test"]),
              "evaluated_split": "test",
              # The test split is the source's, whole; these many of its dialogues were also in
              # the source's train or validation split (scored, and reported apart as seen).
              "test_seen_in_training": int(test_seen_in_training),
              "test_unseen": len(splits["test"]) - int(test_seen_in_training),
              "removed_as_repeats_of_another_split": cross_split_counts(report),
              "lengths": lengths, "report": report},
        metrics=metrics, primary_metric=PRIMARY, baselines=baselines,
        train=record.trained(run, trainer, train_output, memory_estimate), parameters=parameters)
