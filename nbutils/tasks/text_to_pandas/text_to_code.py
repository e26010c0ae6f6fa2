"""Text-to-code helpers: the input format, the train/test overlap check, text metrics, a
retrieval baseline and the run's record (`write_record`).

The execution metrics and the sandbox are in `code_exec`; these are the cheaper, textual
companions: exact match and BLEU (sacrebleu) say how close the code *looks* to the reference,
which execution accuracy then corrects (two different-looking snippets can compute the same
answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The original text2pandas notebook's input: question, then the schema.
DEFAULT_INPUT_TEMPLATE = "<question> {question} <context> {context}"


def format_input(question: str, context: str, template: str = DEFAULT_INPUT_TEMPLATE) -> str:
    """The model's input text for one example. `template` names `{question}` and `{context}`."""
    return template.format(question=(question or "").strip(), context=(context or "").strip())


def normalize_question(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: `What is X?` == `what is  x`."""
    return re.sub(r"\s+", " ", (text or "").lower()).strip().rstrip("?.! ")


@dataclass
class OverlapReport:
    """Test rows that also appear in training, three ways from loose to strict."""

    test_rows: int
    same_question: list[int] = field(default_factory=list)  # normalized question seen in training
    same_question_and_context: list[int] = field(default_factory=list)
    exact_duplicates: list[int] = field(default_factory=list)  # question, context and answer

    def summary(self) -> dict:
        return {"test_rows": self.test_rows, "same_question": len(self.same_question),
                "same_question_and_context": len(self.same_question_and_context),
                "exact_duplicates": len(self.exact_duplicates)}

    def table(self):
        import pandas as pd

        rows = [(name, len(idx), len(idx) / self.test_rows if self.test_rows else 0.0)
                for name, idx in (("same question", self.same_question),
                                  ("same question and context", self.same_question_and_context),
                                  ("exact duplicate (question, context, answer)", self.exact_duplicates))]
        return pd.DataFrame(rows, columns=["test rows that repeat training", "rows", "share"])


def overlap(train_rows, test_rows) -> OverlapReport:
    """Which test rows repeat a training row. Rows are (question, context, answer) tuples."""
    train_rows, test_rows = list(train_rows), list(test_rows)
    questions = {normalize_question(q) for q, _, _ in train_rows}
    pairs = {(normalize_question(q), (c or "").strip()) for q, c, _ in train_rows}
    triples = {(normalize_question(q), (c or "").strip(), (a or "").strip()) for q, c, a in train_rows}
    report = OverlapReport(test_rows=len(test_rows))
    for i, (q, c, a) in enumerate(test_rows):
        key = normalize_question(q)
        if key in questions:
            report.same_question.append(i)
        if (key, (c or "").strip()) in pairs:
            report.same_question_and_context.append(i)
        if (key, (c or "").strip(), (a or "").strip()) in triples:
            report.exact_duplicates.append(i)
    return report


# --- the official test split stays whole; tables apart ------------------------------------------

REPEATS_TEST_QUESTION = "repeats a test question (kept in test)"  # the train or validation row leaves


def remove_test_questions(splits, question_column: str, ledger=None, test: str = "test"):
    """The splits with every non-test row whose question (`normalize_question`) is also a test
    question removed: the test split stays as the source ships it, so its score stays
    comparable, and training (and validation, which chooses the checkpoint) never sees a test
    question. Each removal goes into `ledger` (by `row_id`), counted in the data report.
    Returns (splits, {split: rows removed})."""
    from datasets import DatasetDict

    questions = {normalize_question(q) for q in splits[test][question_column]}
    kept, removed = {}, {}
    for name, split in splits.items():
        if name == test:
            kept[name] = split
            continue
        ids = list(split["row_id"]) if "row_id" in split.column_names else list(range(len(split)))
        keep = []
        for i, question in enumerate(split[question_column]):
            if normalize_question(question) in questions:
                if ledger is not None:
                    ledger.drop(name, ids[i], REPEATS_TEST_QUESTION)
            else:
                keep.append(i)
        removed[name] = len(split) - len(keep)
        kept[name] = split.select(keep)
    return DatasetDict(kept), removed


def table_key(context: str) -> str:
    """What identifies the table(s) a question is about: its schema (each table's name and
    columns, `table_context.parse_context`), or the context text itself where it does not parse.
    text2pandas ships schemas, not table ids; two tables with the same columns count as one."""
    from nbutils.tasks.text_to_pandas.table_context import parse_context

    schema = parse_context(context or "")
    if not schema:
        return re.sub(r"\s+", " ", (context or "").strip())
    return "; ".join(f"{name}({', '.join(map(str, columns))})" for name, columns in sorted(schema.items()))


def tables_seen(test_contexts, training_contexts) -> list[bool]:
    """For each test row, whether a training row asks about the same table (`table_key`):
    WikiSQL keeps the tables of its splits apart, so its test measures tables never seen."""
    known = {table_key(c) for c in training_contexts}
    return [table_key(c) in known for c in test_contexts]


def split_by_table(splits, context_column: str, val_size: float, test_size: float, seed: int,
                   min_tables: int = 1):
    """All rows pooled and split again with whole tables to one split (`table_key`;
    `nbutils.data.group_split_indices`, `val_size` and `test_size` shares of the rows), so no
    test question's table appears in training. It replaces the source's own test split: its
    scores are then not comparable with scores on that split. `row_id` becomes
    "<source split>:<row>", naming each row's place in the source."""
    import numpy as np
    from datasets import Dataset, DatasetDict

    from nbutils.data import group_split_indices

    rows = [{**row, "row_id": f"{name}:{row['row_id']}"} for name, split in splits.items() for row in split]
    groups = [table_key(row[context_column]) for row in rows]
    parts = group_split_indices(np.zeros(len(rows)), groups, val_size, test_size, seed, min_groups=min_tables,
                                group_column="the table (split_by_table)")
    return DatasetDict({name: Dataset.from_list([rows[i] for i in idx])
                        for name, idx in zip(("train", "validation", "test"), parts)})


# --- the scores: one denominator per metric, each stated -------------------------------------

SCORED = "test (rows whose reference can be scored)"
MEASURED_ON = {
    "execution_accuracy": SCORED, "exact_match": SCORED, "bleu": SCORED,
    "execution_accuracy_all_rows": "test (all rows; a row whose reference cannot be scored counts as wrong)",
    "exact_match_all_rows": "test (all rows)", "bleu_all_rows": "test (all rows)",
    "execution_accuracy_unseen_tables": "test (rows whose reference can be scored, on tables unseen in training)",
}


def scores_on_test(outcomes, left_out, predictions, references, table_seen, **bootstrap) -> dict:
    """Execution accuracy, exact match and BLEU of `predictions` over **one denominator**, the
    scored test rows (whose reference runs and tells answers apart: not a `reference_error` nor
    in `left_out`), and again over all test rows (`*_all_rows`: an unscored row counts as wrong
    for execution accuracy); execution accuracy on the scored rows whose table is unseen in
    training. Bootstrap intervals over the rows each averages (not for corpus BLEU); `measured_on`
    names each metric's rows in words; `denominator` counts them. `outcomes`: one outcome per
    test row (`code_exec.ExecutionReport.outcomes`)."""
    import numpy as np

    from nbutils.metrics import bootstrap_interval
    from nbutils.sandbox.code_exec import REFERENCE_ERROR

    outcomes, predictions, references = list(outcomes), list(predictions), list(references)
    n = len(references)
    if not (len(outcomes) == len(predictions) == len(table_seen) == n) or not n:
        raise ValueError(f"{len(outcomes)} outcomes, {len(predictions)} predictions, {len(table_seen)} tables "
                         f"for {n} references")
    scored = np.array([o != REFERENCE_ERROR and i not in left_out for i, o in enumerate(outcomes)])
    correct = np.array([o == "correct" for o in outcomes], dtype=float) * scored
    exact = np.array([p.strip() == r.strip() for p, r in zip(predictions, references)], dtype=float)
    unseen = scored & ~np.asarray(table_seen, dtype=bool)
    out, intervals = {}, {}

    def mean(name, values):
        out[name] = float(values.mean()) if values.size else None
        if values.size:
            intervals[name] = bootstrap_interval(np.mean, values, **bootstrap)

    mean("execution_accuracy", correct[scored])
    mean("exact_match", exact[scored])
    out["bleu"] = bleu([p for p, s in zip(predictions, scored) if s],
                       [r for r, s in zip(references, scored) if s]) if scored.any() else None
    mean("execution_accuracy_all_rows", correct)
    mean("exact_match_all_rows", exact)
    out["bleu_all_rows"] = bleu(predictions, references)
    if unseen.any():
        mean("execution_accuracy_unseen_tables", correct[unseen])
    measured_on = {k: MEASURED_ON[k] for k in out if out[k] is not None}
    return {**out, "intervals": intervals, "measured_on": measured_on,
            "denominator": {"scored_rows": int(scored.sum()), "test_rows": n,
                            "scored_rows_on_unseen_tables": int(unseen.sum())}}


def paired_execution_difference(outcomes_a, outcomes_b, left_out, **bootstrap) -> dict:
    """Execution accuracy of a minus b on the same scored test rows, with a paired bootstrap
    interval (`nbutils.metrics.paired_mean_difference`)."""
    from nbutils.metrics import paired_mean_difference
    from nbutils.sandbox.code_exec import REFERENCE_ERROR

    outcomes_a, outcomes_b = list(outcomes_a), list(outcomes_b)
    scored = [i for i, (a, b) in enumerate(zip(outcomes_a, outcomes_b))
              if REFERENCE_ERROR not in (a, b) and i not in left_out]
    return paired_mean_difference([outcomes_a[i] == "correct" for i in scored],
                                  [outcomes_b[i] == "correct" for i in scored], **bootstrap)


def describe_scores(name: str, scores: dict) -> str:
    """The headline with its interval and its denominator, then the all-rows figures, in words."""
    from nbutils.metrics import format_interval

    d, iv = scores["denominator"], scores["intervals"]
    level = iv["execution_accuracy_all_rows"]["level"]

    def value(key, digits=3):
        return "-" if scores.get(key) is None else format_interval(scores[key], iv.get(key), digits)

    lines = [f"{name}: execution accuracy {value('execution_accuracy')}, exact match {value('exact_match')}, "
             f"BLEU {value('bleu', 1)} on the {d['scored_rows']} of {d['test_rows']} test rows whose reference "
             f"can be scored; on all {d['test_rows']} (an unscored row counts as wrong): execution accuracy "
             f"{value('execution_accuracy_all_rows')}, exact match {value('exact_match_all_rows')}, BLEU "
             f"{value('bleu_all_rows', 1)}"]
    if scores.get("execution_accuracy_unseen_tables") is not None:
        lines.append(f"  on the {d['scored_rows_on_unseen_tables']} scored rows whose table is unseen in training: "
                     f"execution accuracy {value('execution_accuracy_unseen_tables')}")
    else:
        lines.append("  no scored test row is on a table unseen in training")
    return "\n".join(lines) + f"\n  ({level:.0%} bootstrap intervals over those test rows)"


def exact_match(predictions, references) -> float:
    """Share of predictions equal to the reference (outer whitespace ignored)."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references) or not references:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)


def bleu(predictions, references) -> float:
    """Corpus BLEU (0 to 100) with sacrebleu's defaults (13a tokenization, exponential
    smoothing). `evaluate.load("bleu")` would fetch a script from the hub."""
    import sacrebleu

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references) or not references:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def generation_budget(target_lengths, margin: float = 0.25, minimum_extra: int = 8) -> int:
    """New tokens to allow at generation: the longest training target plus a margin, so that a
    long test target is not cut (the original notebook stopped at transformers' default 20)."""
    longest = max(int(n) for n in target_lengths)
    return longest + max(minimum_extra, int(round(longest * margin)))


def nearest_neighbour_answers(train_inputs, train_answers, test_inputs) -> list[str]:
    """Baseline: for each test input, the answer of the most similar training input (TF-IDF on
    word 1-2 grams, cosine). It needs no training and scores well exactly where test questions
    repeat training ones, which is why the overlap check matters."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import linear_kernel

    train_inputs, train_answers, test_inputs = list(train_inputs), list(train_answers), list(test_inputs)
    if not train_inputs or len(train_inputs) != len(train_answers):
        raise ValueError("need as many training answers as training inputs, and at least one")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"[A-Za-z0-9_]+", sublinear_tf=True)
    train_matrix = vectorizer.fit_transform(train_inputs)
    answers = []
    for start in range(0, len(test_inputs), 256):  # bounded memory: 256 x 73k similarities
        similarity = linear_kernel(vectorizer.transform(test_inputs[start:start + 256]), train_matrix)
        answers += [train_answers[j] for j in similarity.argmax(axis=1).tolist()]
    return answers


def tokenize_pairs(tokenizer, inputs, targets, max_source_length: int, max_target_length: int = 0) -> dict:
    """Input ids and labels, unpadded: `DataCollatorForSeq2Seq` pads each batch, inputs with the
    pad token and labels with -100, so padding never counts in the loss (the original notebook
    padded labels with the pad token, which the loss then learned and averaged in).
    `max_target_length` 0 keeps every target whole."""
    features = tokenizer(list(inputs), max_length=max_source_length, truncation=True)
    labels = tokenizer(text_target=list(targets), max_length=max_target_length or None,
                       truncation=bool(max_target_length))
    features["labels"] = labels["input_ids"]
    return features


def generate_code(model, tokenizer, inputs, max_new_tokens: int, num_beams: int = 1,
                  batch_size: int = 32, max_source_length: int = 512) -> list[str]:
    """Generate one answer per input text, decoded as the metrics read it.

    `max_new_tokens` is always passed (the default stops at 20 tokens). Inputs are batched by
    length, so little of each batch is padding; answers come back in the order of `inputs`.
    """
    import torch

    from nbutils.tokenizer_coverage import decode

    inputs = list(inputs)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    answers: list[str] = [""] * len(inputs)
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = tokenizer([inputs[i] for i in chunk], max_length=max_source_length, truncation=True,
                          padding=True, return_tensors="pt").to(model.device)
        with torch.no_grad():
            output = model.generate(**batch, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                    do_sample=False)
        for i, ids in zip(chunk, output.tolist()):
            answers[i] = decode(tokenizer, ids).strip()
    return answers


# --- reading the data: two forms, one malformed-row rule ----------------------------------------

DATA_FORMATS = ("auto", "columns", "single_column")
# Names the answer column has in the single-column form (Rahima411/text-to-pandas: `Pandas Query`).
SINGLE_COLUMN_ANSWERS = ("Pandas Query", "Output", "output")


def detect_data_format(columns, requested: str, input_column: str, question_column: str,
                       context_column: str, answer_column: str) -> tuple[str, str]:
    """(format, answer column): `columns` (question, context and answer columns, as in
    zeyadusf/text2pandas) or `single_column` (`input_column` holds the schema text and the
    question, as upstream). `auto` picks the one the columns fit."""
    columns = list(columns)
    if requested not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {', '.join(DATA_FORMATS)}, got {requested!r}")
    has_columns = question_column in columns and context_column in columns
    fmt = requested if requested != "auto" else (
        "columns" if has_columns else "single_column" if input_column in columns else "columns")
    if fmt == "columns":
        return fmt, answer_column
    if input_column not in columns:
        raise KeyError(f"data_format='single_column' needs input_column={input_column!r}, which is not a "
                       f"column of the data; columns present: {', '.join(columns)}")
    answer = answer_column if answer_column in columns else next(
        (c for c in SINGLE_COLUMN_ANSWERS if c in columns), None)
    if answer is None:
        raise KeyError(f"answer_column={answer_column!r} is not a column of the data (nor "
                       f"{', '.join(map(repr, SINGLE_COLUMN_ANSWERS))}); columns present: {', '.join(columns)}")
    return fmt, answer


def clean_rows(split, split_name: str, fmt: str, ledger, question_column: str, context_column: str,
               answer_column: str, input_column: str = "Input", source_answer_column: str = ""):
    """Apply the malformed-row rule (`nbutils.run.row_report`) to one split, in either form.

    Repaired: `\\r\\n` line ends. Dropped: an `Input` not in the `table: ...` / `question: ...`
    form (single-column), an empty question or answer, a reference answer that does not parse
    as Python (the real sets' broken quoting: it could be neither trained on nor scored).
    Returns the kept rows as question, context (the code form: the schema text of the
    single-column form is turned into it), answer and `row_id` (the row's position in the split).
    """
    import ast

    from datasets import Dataset

    from nbutils.run.row_report import is_blank, normalise_line_ends
    from nbutils.tasks.text_to_pandas.table_context import context_from_schema, parse_schema_text

    ledger.add_read(split_name, len(split))
    source_answer_column = source_answer_column or answer_column
    kept = []
    for i, row in enumerate(split):
        if fmt == "single_column":
            parsed = parse_schema_text(row[input_column])
            if parsed is None:
                ledger.drop(split_name, i, f"{input_column!r} not in the 'table: name (col : type , ...)' "
                                           "+ 'question: ...' form")
                continue
            schema, question = parsed
            values = {"question": question, "context": context_from_schema(schema),
                      "answer": row[source_answer_column]}
        else:
            values = {"question": row[question_column], "context": row[context_column],
                      "answer": row[answer_column]}
        if is_blank(values["question"]) or is_blank(values["answer"]):
            ledger.drop(split_name, i, "empty question" if is_blank(values["question"]) else "empty answer")
            continue
        changed = False
        for key in values:
            values[key], fixed = normalise_line_ends(values[key] if values[key] is not None else "")
            changed = changed or fixed
        try:
            ast.parse(values["answer"])
        except SyntaxError:
            ledger.drop(split_name, i, "reference answer does not parse as Python")
            continue
        if changed:
            ledger.repair(split_name, i, "\\r\\n line ends normalised to \\n")
        kept.append({question_column: values["question"], context_column: values["context"],
                     answer_column: values["answer"], "row_id": i})
    if not kept:
        return Dataset.from_dict({question_column: [], context_column: [], answer_column: [], "row_id": []})
    return Dataset.from_list(kept)


def write_record(run, trainer, train_output, *, splits, fingerprint: str, data_format: str, report: dict,
                 overlap: OverlapReport, removed_for_test_questions: dict, tables_seen: list, tables: dict,
                 inputs_truncated: float, answers_truncated: float, generation_max_new_tokens: int,
                 coverage_before, coverage_after, added_tokens: list, containment: str, refusals: dict,
                 metrics: dict, baselines: dict, parameters: dict) -> dict:
    """The run's record (`nbutils.run.record`): the data (source and fingerprints, the hashes of
    the row ids each split used, the overlap the source has between test and training questions
    and the training rows removed for it (the test split is kept whole), how many test questions
    are on a table that training also asks about, the kinds of tables scored on, truncation, the
    tokenizer's coverage of the training answers before and after the added tokens, the data
    report, the sandbox's containment and what its static check refused), the test metrics with
    execution accuracy the headline (each over its stated rows, with intervals), the baselines,
    and how training went. Written into the run folder; returned. Every process calls it; the
    main one writes."""
    from nbutils import batching, data
    from nbutils.run import record

    config = run.config
    tables_source = config.get("tables_source")
    seen_tables = sum(bool(seen) for seen in tables_seen)
    return record.write(
        run, task="text-to-pandas", model=config["model_name"],
        data={"source": config["data_source"], "fingerprint": fingerprint,
              "split_hashes": record.split_hashes(splits),  # of the row ids each split scored
              "tables_fingerprint": data.fingerprint(tables_source) if tables_source else None,
              "train": len(splits["train"]), "validation": len(splits["validation"]), "test": len(splits["test"]),
              # The source's test questions that training also held (before their removal from
              # training; the test split is kept whole), and the rows removed per split for it.
              "overlap": overlap.summary(), "removed_as_repeats_of_a_test_question": removed_for_test_questions,
              "split_by_table": bool(config.get("split_by_table")),
              "test_tables_in_training": {"rows": seen_tables, "test_rows": len(tables_seen),
                                          "share": seen_tables / len(tables_seen) if tables_seen else None},
              "tables": tables, "inputs_truncated": inputs_truncated, "answers_truncated": answers_truncated,
              "generation_max_new_tokens": generation_max_new_tokens,
              "coverage_before": coverage_before.summary(), "coverage_after": coverage_after.summary(),
              "added_tokens": added_tokens, "data_format": data_format, "report": report,
              "sandbox": {"containment": containment, "references_refused": refusals["refused"],
                          "refused_by_rule": refusals["by_rule"], "references_not_parsing": refusals["not_parsing"]}},
        metrics=metrics, primary_metric="execution_accuracy", baselines=baselines,
        # Time, throughput and tokens; this record has never held what each process held
        # (`record.trained` adds that), so records of the same parameters stay comparable.
        train={**record.train_summary(train_output), **batching.train_token_summary(trainer, train_output)},
        parameters=parameters)
