"""The one malformed-row rule, the sample data's real-data quirks, and what the records report.

Each quirk kind has a test: the sample data contains it (counted here from the file itself) and
the notebook's handling is what its smoke run's record reports (the session-wide smoke runs).
"""

from __future__ import annotations

import ast
import csv
import json

import pytest

from nbutils import data
from nbutils.run import row_report
from nbutils.tasks.instruction_tuning import instructions
from tools import runner
from nbutils.tasks.text_to_pandas import table_context, text_to_code
from tests.fixtures.samples import text2pandas

from conftest import ROOT


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _record(outputs, project):
    return json.loads((outputs / project / "metrics.json").read_text())


def _report(smoke_run, notebook, project):
    code, outputs = smoke_run(notebook)
    assert (outputs / project / "metrics.json").is_file(), f"{project} wrote no record (exit {code})"
    return _record(outputs, project)["data"]["report"]


# --- the ledger and its rule -----------------------------------------------------------------

def test_ledger_counts_rows_and_keeps_reasons_with_capped_ids():
    ledger = row_report.RowLedger(max_ids=3)
    ledger.add_read("train", 100)
    ledger.add_read("test", 10)
    for i in range(5):
        ledger.drop("train", i, "empty text")
    ledger.drop("train", 0, "duplicate")  # a row is dropped once
    ledger.repair("train", 7, "line ends")
    ledger.repair("train", 7, "empty trailing turn")
    ledger.note("test", 2, "placeholder")
    summary = ledger.summary()
    assert summary["rows"] == {"read": 110, "kept": 105, "repaired": 1, "dropped": 5}
    assert summary["by_split"]["test"] == {"read": 10, "kept": 10, "repaired": 0, "dropped": 0}
    assert summary["dropped"] == {"empty text": {"count": 5, "by_split": {"train": 5},
                                                 "row_ids": ["train:0", "train:1", "train:2"]}}
    assert set(summary["repaired"]) == {"line ends", "empty trailing turn"}
    assert summary["noted"]["placeholder"]["row_ids"] == ["test:2"]
    ledger.check(0.05)  # 5 of 110 rows, 5 of 100 in train: at the limit, not above it


def test_check_stops_above_the_share_naming_reasons_counts_and_parameter():
    ledger = row_report.RowLedger()
    ledger.add_read("train", 100)
    ledger.add_read("test", 10)
    ledger.drop("test", 3, "reference answer does not parse as Python")
    ledger.drop("test", 4, "reference answer does not parse as Python")
    ledger.check(0.2)
    # 2 of 110 in all is under 5%, but 2 of 10 in the test split is not.
    with pytest.raises(row_report.BadRowsError, match=r"2 of 10 rows in the test split \(20.0%\) cannot be "
                                                      r"used: reference answer does not parse as Python: 2 "
                                                      r"\(e.g. test:3, test:4\); more than max_bad_row_share=0.05"):
        ledger.check(0.05)
    with pytest.raises(ValueError, match="max_bad_row_share must be a fraction"):
        ledger.check(1.5)


def test_length_report_is_the_one_shared_by_the_notebooks():
    report = row_report.length_report([10, 20, 30, 40, 250], 30)
    assert report["truncated"] == 2 and report["truncated_fraction"] == 0.4 and report["median"] == 30
    assert report["mean"] == 70.0 and "tokens_cut" not in report
    # Prompt/completion examples (instruction tuning): the same keys, and what the limit cuts.
    with_prompts = row_report.length_report([10, 20, 30, 40, 250], 30, prompt_lengths=[5, 5, 5, 5, 200])
    assert with_prompts == {**report, "prompt_fills_max_length": 1, "tokens_cut": 10 + 220}
    with pytest.raises(ValueError, match="no examples"):
        row_report.length_report([], 30)


# --- detection: empty and missing texts, duplicates, other languages, very long essays --------

def _daigt(cache):
    with (cache / "sample-data" / "daigt_v2_train.csv").open(encoding="utf-8", newline="") as f:  # keep \r\n
        return list(csv.DictReader(f))


def test_detection_sample_has_empty_texts_duplicates_other_languages_and_long_essays(cache):
    rows = _daigt(cache)
    texts = [r["text"] for r in rows]
    assert sum(not t.strip() for t in texts) == 3  # "", blank, and an empty field (missing)
    non_empty = [t.replace("\r\n", "\n") for t in texts if t.strip()]
    assert len(non_empty) - len(set(non_empty)) == 4
    assert sum(data.has_non_ascii_letters(t) for t in non_empty) >= 6
    assert sum(len(t.split()) > 250 for t in texts) >= 25  # far past the smoke max_length of 128 tokens


def test_detection_record_reports_what_the_sample_holds(cache, smoke_run):
    report = _report(smoke_run, "detect_ai_text", "detect_ai_text/bert")
    texts = [r["text"] for r in _daigt(cache)]
    empty = sum(not t.strip() for t in texts)
    non_empty = [t.replace("\r\n", "\n") for t in texts if t.strip()]
    duplicates = len(non_empty) - len(set(non_empty))
    assert report["rows"] == {"read": len(texts), "kept": len(texts) - empty - duplicates,
                              "repaired": sum("\r\n" in t for t in texts), "dropped": empty + duplicates}
    assert report["dropped"]["empty or missing 'text'"]["count"] == empty
    assert report["dropped"]["duplicate 'text' (an earlier row has the same text)"]["count"] == duplicates
    noted = report["noted"]["non-ASCII letters (another language?), kept"]["count"]
    assert noted == sum(data.has_non_ascii_letters(t) for t in set(non_empty))
    assert report["lengths"]["train_text"]["truncated_fraction"] > 0.2  # the long essays, cut at 128
    assert set(report["labels"]) == {"train", "validation", "test"}
    assert report["max_bad_row_share"] == 0.05


def test_second_source_uses_prompt_id_and_generated_and_the_loader_maps_them(cache):
    path = cache / "sample-data" / "llm_detect_train_essays.csv"
    table = data.load_table(str(path))
    assert set(table["prompt_id"]) == {0, 1} and "label" not in table.column_names
    found, messages = data.resolve_columns(table, text_column="text", label_column="label",
                                           group_column="prompt_name")
    assert found == {"text_column": "text", "label_column": "generated", "group_column": "prompt_id"}
    assert "label_column='label' is not a column of the data; using 'generated'" in messages[0]
    with pytest.raises(KeyError, match="label_column='score' is not a column"):
        data.resolve_columns(table, label_column="score")


# --- SAMSum: \r\n line ends, <file_photo> placeholders, empty rows, duplicates -----------------

def test_dialogue_sample_and_record_agree_on_every_quirk(cache, smoke_run):
    splits = {s: _jsonl(cache / "sample-data" / "samsum" / f"{s}.jsonl") for s in ("train", "validation", "test")}
    rows = [r for s in splits.values() for r in s]
    blank = [r for r in rows if not (r["dialogue"] or "").strip() or not (r["summary"] or "").strip()]
    assert len(blank) == 4 and any(r["summary"] is None for r in blank)
    dialogues = [r["dialogue"] for r in rows if r not in blank]
    duplicates = len(dialogues) - len(set(dialogues))
    # 2 repeats within train or validation, and 4 copies in train of a dialogue that test (3, about
    # SAMSum's 46 in 819) or validation (1) keeps: each copy is dropped once, from the lower split
    assert duplicates == 6
    with_crlf = sum("\r\n" in d for d in set(dialogues))
    with_placeholder = sum("<file_" in d for d in set(dialogues))
    assert with_crlf > 100 and with_placeholder > 10

    report = _report(smoke_run, "summarize_dialogues", "summarize_dialogues/flan_t5_large")
    assert report["rows"]["read"] == len(rows)
    assert report["rows"]["dropped"] == len(blank) + duplicates
    assert report["repaired"]["\\r\\n line ends normalised to \\n"]["count"] == with_crlf
    assert report["noted"]["<file_...> placeholders (attachments), kept"]["count"] == with_placeholder
    assert report["by_split"]["validation"]["dropped"] == 1 and report["by_split"]["test"]["dropped"] == 0
    assert report["dropped"]["repeats a test dialogue (kept there)"]["count"] == 3
    assert report["dropped"]["repeats a validation dialogue (kept there)"]["count"] == 1
    assert set(report["lengths"]) == {"input", "target"}  # inputs and targets, per split
    assert report["lengths"]["target"]["train"]["truncated"] > 0


# --- guanaco: empty trailing turns (repaired), an empty answer mid-conversation (dropped) ------

def test_instruction_sample_and_record_agree_on_malformed_turns(cache, smoke_run):
    rows = _jsonl(cache / "sample-data" / "guanaco_llama2_1k.jsonl")
    empty_turn = sum(r["text"].endswith("<s>[INST]  [/INST]") for r in rows)
    empty_answer = sum(r["text"].endswith("[/INST] </s>") for r in rows)
    assert empty_turn == 2 and empty_answer == 1
    report = _report(smoke_run, "instruction_tune", "instruction_tune/llama2_7b")
    assert report["rows"] == {"read": len(rows), "kept": len(rows) - 1, "repaired": 3, "dropped": 1}
    assert report["repaired"]["empty trailing turn removed"]["count"] == empty_turn + empty_answer
    assert list(report["dropped"]) == ["empty answer in turn 1"]
    assert report["lengths"]["train"]["limit"] == 192


def test_trailing_empty_turns_are_removed_and_a_first_turn_never():
    text = "<s>[INST] q [/INST] a </s><s>[INST] q2 [/INST] </s><s>[INST]  [/INST]"
    assert instructions.trim_empty_trailing_turns(text) == ("<s>[INST] q [/INST] a </s>", 2)
    assert instructions.trim_empty_trailing_turns("<s>[INST] q [/INST] </s>")[1] == 0  # dropped, not repaired


# --- text-to-pandas: references that do not parse; the upstream single-column form -----------

def test_text2pandas_sample_and_record_agree_on_references_that_do_not_parse(cache, smoke_run):
    def broken(rows):
        out = 0
        for r in rows:
            try:
                ast.parse(r["answer"])
            except SyntaxError:
                out += 1
        return out

    train = _jsonl(cache / "sample-data" / "text2pandas" / "train.jsonl")
    test = _jsonl(cache / "sample-data" / "text2pandas" / "test.jsonl")
    assert broken(train) == round(text2pandas.BROKEN_SHARE * text2pandas.N_TRAIN)
    assert broken(test) == round(text2pandas.BROKEN_SHARE * text2pandas.N_TEST)
    report = _report(smoke_run, "text_to_pandas", "text_to_pandas")
    dropped = report["dropped"]["reference answer does not parse as Python"]
    # validation is carved out of train before the rule runs: train + validation = the train file
    assert dropped["count"] == broken(train) + broken(test)
    assert dropped["by_split"]["test"] == broken(test)
    assert report["dropped"]["empty answer"]["count"] == 1
    assert report["lengths"]["train_input"]["limit"] == 128


def test_upstream_single_column_form_is_detected_and_parsed(cache):
    rows = _jsonl(cache / "sample-data" / text2pandas.UPSTREAM_DIR / "test.jsonl")
    assert list(rows[0]) == ["Input", "Pandas Query"] and rows[0]["Pandas Query"].startswith("result = ")
    schema, question = table_context.parse_schema_text(rows[0]["Input"])
    context = table_context.context_from_schema(schema)
    assert table_context.parse_context(context) == schema and question.endswith(("?", "."))
    fmt, answer = text_to_code.detect_data_format(["Input", "Pandas Query"], "auto", "Input",
                                                  "question", "context", "answer")
    assert (fmt, answer) == ("single_column", "Pandas Query")
    assert text_to_code.detect_data_format(["question", "context", "answer"], "auto", "Input",
                                           "question", "context", "answer") == ("columns", "answer")
    assert table_context.parse_schema_text("question: what?") is None
    from datasets import Dataset

    ledger = row_report.RowLedger()
    kept = text_to_code.clean_rows(Dataset.from_list(rows + [{"Input": "no schema here", "Pandas Query": "x"}]),
                                   "test", fmt, ledger, "question", "context", "answer", "Input", answer)
    assert kept[0]["context"] == context and kept[0]["answer"] == rows[0]["Pandas Query"]
    dropped = ledger.summary()["dropped"]
    assert dropped["reference answer does not parse as Python"]["count"] == round(text2pandas.BROKEN_SHARE * 72)
    assert sum(e["count"] for e in dropped.values()) == len(rows) + 1 - len(kept)


# --- the command line ------------------------------------------------------------------------

@pytest.mark.slow
def test_options_may_come_before_the_project_name():
    # Before the fix argparse refused the name after an option ("unrecognized arguments").
    with pytest.raises(SystemExit, match="unknown project 'no_such_project'"):
        runner.main(["run", "--profile", "smoke", "--root", str(ROOT), "no_such_project"])


def test_an_empty_parameter_value_is_the_empty_string():
    assert runner._override("tables_source=") == ("tables_source", "")
    assert runner._override("tables_source=  ") == ("tables_source", "")
    assert runner._override("epochs=2") == ("epochs", 2)
    assert runner._override("holdout_values=[]") == ("holdout_values", [])
