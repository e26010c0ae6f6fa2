"""Text to pandas: the sandbox, execution accuracy, tokenizer coverage, the overlap check, the
sample data, and the notebook end to end on the tiny T5."""

import json
import os

import pandas as pd
import pytest

from conftest import ROOT, run_smoke_project
from nbutils.sandbox import code_exec
from nbutils.tasks.text_to_pandas import table_context, text_to_code
from nbutils import data
from nbutils.run import record
from tools import runner
from nbutils import tokenizer_coverage as coverage
from nbutils.sandbox.code_exec import ExecutionEvaluator, Sandbox, canonical, results_match
from tests.fixtures.samples import text2pandas

TABLE = {"df": {"columns": ["name", "team", "points"],
                "rows": [["Ann", "red", 10], ["Bob", "red", 25], ["Cid", "blue", 7], ["Dee", "blue", 31]]}}


@pytest.fixture(scope="module")
def box():
    with Sandbox(timeout=1.0, memory_mb=256, workers=2) as sandbox:
        yield sandbox


# --- the sample data --------------------------------------------------------------------------

def test_sample_is_deterministic_and_in_the_text2pandas_schema(tmp_path):
    a = text2pandas.write_text2pandas_jsonl(tmp_path / "a.jsonl", seed=0, split="test")
    b = text2pandas.write_text2pandas_jsonl(tmp_path / "b.jsonl", seed=0, split="test")
    c = text2pandas.write_text2pandas_jsonl(tmp_path / "c.jsonl", seed=1, split="test")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    # The clean rows, then the quirk rows (broken quoting, an empty answer) at the sample's share.
    quirks = round(text2pandas.BROKEN_SHARE * text2pandas.N_TEST)
    assert len(rows) == text2pandas.N_TEST + quirks
    assert all(list(r) == ["question", "context", "answer"] for r in rows)
    assert all(table_context.parse_context(r["context"]) for r in rows)


def test_sample_answers_need_the_characters_t5_lacks():
    answers = [r["answer"] for r in text2pandas.text2pandas_rows()["train"]]
    for char in "{}<":
        assert sum(char in a for a in answers) >= 20, char


def test_every_sample_reference_runs_to_a_non_empty_result(box):
    known = {(t["name"], tuple(t["columns"])): {"columns": t["columns"], "rows": t["rows"]}
             for t in text2pandas.tables()}
    rows = [row for split in text2pandas.text2pandas_rows().values() for row in split]
    envs = [table_context.example_environments(r["context"], r["answer"], known) for r in rows]
    assert all(len(e) == 1 for e in envs), "every sample context names a known table"
    runs = box.map(lambda i: box.run(rows[i]["answer"], envs[i][0]), range(len(rows)))
    for row, run in zip(rows, runs):
        assert run.status == "ok", (row["answer"], run.error)
        value = run.value
        assert (value["kind"] == "scalar" and value["value"] is not None) or value.get("rows"), row


def test_the_sample_test_split_repeats_training_questions_and_the_check_finds_them():
    rows = text2pandas.text2pandas_rows()
    as_tuples = lambda split: [(r["question"], r["context"], r["answer"]) for r in rows[split]]  # noqa: E731
    report = text_to_code.overlap(as_tuples("train"), as_tuples("test"))
    assert len(report.same_question) == len(report.exact_duplicates) == text2pandas.LEAKED
    leaked = {rows["test"][i]["question"] for i in report.same_question}
    assert leaked <= {r["question"] for r in rows["train"]}


def test_overlap_ignores_case_spacing_and_final_punctuation():
    train = [("How many players are there?", "ctx", "a")]
    test = [("how many  players are there", "other ctx", "b"), ("How many teams?", "ctx", "a")]
    report = text_to_code.overlap(train, test)
    assert report.same_question == [0] and report.same_question_and_context == []
    assert report.summary() == {"test_rows": 2, "same_question": 1, "same_question_and_context": 0,
                                "exact_duplicates": 0}


def test_the_test_split_stays_whole_and_training_loses_its_copies_of_test_questions():
    """text2pandas ships its own test split; the old rule cut the test rows that training repeats
    (the sample: 8 of 72), so the score was on another test set. Now train and validation give way."""
    from datasets import Dataset, DatasetDict

    from nbutils.run.row_report import RowLedger, data_report

    rows = text2pandas.text2pandas_rows()
    splits = DatasetDict({name: Dataset.from_list([{**r, "row_id": i} for i, r in enumerate(rows[name])])
                          for name in ("train", "test")})
    splits["validation"] = Dataset.from_list([{**rows["test"][0], "question": rows["test"][0]["question"].upper() + "?",
                                               "row_id": 0}, {**rows["train"][0], "row_id": 1}])
    ledger = RowLedger()
    for name, split in splits.items():
        ledger.add_read(name, len(split))
    kept, removed = text_to_code.remove_test_questions(splits, "question", ledger)
    assert len(kept["test"]) == text2pandas.N_TEST and list(kept["test"]["row_id"]) == list(range(text2pandas.N_TEST))
    assert removed == {"train": text2pandas.LEAKED, "validation": 1}
    assert list(kept["validation"]["row_id"]) == [1]  # the test question in other case and punctuation went
    assert not text_to_code.overlap([(r["question"], r["context"], r["answer"]) for r in kept["train"]],
                                    [(r["question"], r["context"], r["answer"]) for r in kept["test"]]).same_question
    report = data_report(ledger, 0.5)
    assert report["dropped"][text_to_code.REPEATS_TEST_QUESTION]["by_split"] == {"train": text2pandas.LEAKED,
                                                                                  "validation": 1}
    assert report["by_split"]["test"]["dropped"] == 0


def test_tables_are_keyed_by_schema_and_split_whole():
    one = "df = pd.DataFrame(columns=['player', 'team'])"
    assert text_to_code.table_key(one) == text_to_code.table_key("df = pd.DataFrame(columns=['player','team'])  ")
    assert text_to_code.table_key(one) != text_to_code.table_key("df = pd.DataFrame(columns=['team', 'points'])")
    assert text_to_code.tables_seen([one, "df = pd.DataFrame(columns=['x'])"], [one]) == [True, False]
    # The sample's test questions are all about tables training asks about (a random re-split);
    # split_by_table gives each table to one split.
    from datasets import Dataset, DatasetDict

    rows = text2pandas.text2pandas_rows()
    contexts = lambda split: [r["context"] for r in rows[split]]  # noqa: E731
    assert all(text_to_code.tables_seen(contexts("test"), contexts("train")))
    splits = DatasetDict({name: Dataset.from_list([{**r, "row_id": i} for i, r in enumerate(rows[name])])
                          for name in ("train", "test")})
    regrouped = text_to_code.split_by_table(splits, "context", 0.15, 0.2, seed=0)
    keys = {name: {text_to_code.table_key(c) for c in split["context"]} for name, split in regrouped.items()}
    assert all(keys.values()) and not (keys["train"] & keys["test"] or keys["train"] & keys["validation"]
                                       or keys["validation"] & keys["test"])
    assert sum(len(s) for s in regrouped.values()) == sum(len(s) for s in splits.values())
    assert not any(text_to_code.tables_seen(regrouped["test"]["context"], regrouped["train"]["context"]))
    assert regrouped["test"][0]["row_id"].split(":")[0] in ("train", "test")


def test_every_metric_has_one_stated_denominator_and_an_interval():
    """Execution accuracy was over the scored rows, exact match and BLEU over all test rows. Now
    each is over the scored rows, and again over all rows under its own name."""
    outcomes = ["correct", "wrong_result", code_exec.REFERENCE_ERROR, "correct", "syntax_error"]
    predictions = ["a", "b", "c", "x", "e"]
    references = ["a", "B", "c", "d", "e"]  # rows 0, 2, 4 match exactly
    left_out = {4: "empty on every table"}  # uninformative: not scored
    scores = text_to_code.scores_on_test(outcomes, left_out, predictions, references,
                                         [True, True, True, False, True], resamples=200)
    assert scores["denominator"] == {"scored_rows": 3, "test_rows": 5, "scored_rows_on_unseen_tables": 1}
    assert scores["execution_accuracy"] == pytest.approx(2 / 3) and scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["bleu"] == pytest.approx(text_to_code.bleu(["a", "b", "x"], ["a", "B", "d"]))
    assert scores["execution_accuracy_all_rows"] == pytest.approx(2 / 5)  # unscored rows count as wrong
    assert scores["exact_match_all_rows"] == pytest.approx(3 / 5)
    assert scores["bleu_all_rows"] == pytest.approx(text_to_code.bleu(predictions, references))
    assert scores["execution_accuracy_unseen_tables"] == 1.0
    assert set(scores["measured_on"]) == set(text_to_code.MEASURED_ON)
    assert scores["measured_on"]["exact_match"] == scores["measured_on"]["execution_accuracy"]
    for name, interval in scores["intervals"].items():
        assert interval["low"] <= scores[name] <= interval["high"], name
    assert "bleu" not in scores["intervals"]
    text = text_to_code.describe_scores("model", scores)
    assert "on the 3 of 5 test rows whose reference can be scored" in text and "on all 5" in text
    difference = text_to_code.paired_execution_difference(outcomes, ["wrong_result"] * 5, left_out, resamples=200)
    assert difference["difference"] == pytest.approx(2 / 3)


# --- execution accuracy -----------------------------------------------------------------------

def _sample_test_set():
    rows = text2pandas.text2pandas_rows()["test"]
    known = {(t["name"], tuple(t["columns"])): {"columns": t["columns"], "rows": t["rows"]}
             for t in text2pandas.tables()}
    references = [r["answer"] for r in rows]
    envs = [table_context.example_environments(r["context"], r["answer"], known) for r in rows]
    return references, envs


def test_a_correct_reference_scores_100_percent_against_itself(box):
    references, envs = _sample_test_set()
    report = ExecutionEvaluator(references, envs, box).score(references)
    assert report.accuracy == 1.0 and report.scored == len(references)
    assert report.counts["correct"] == len(references)


def test_wrong_code_is_counted_as_wrong(box):
    references, envs = _sample_test_set()
    evaluator = ExecutionEvaluator(references, envs, box)
    # Each question answered with the next question's code: different answers, same tables.
    shifted = references[1:] + references[:1]
    report = evaluator.score(shifted)
    assert report.counts["correct"] <= 2  # two questions may share an answer by chance
    assert report.counts["wrong_result"] + report.counts["runtime_error"] == len(references) - report.counts["correct"]


def test_equivalent_code_counts_as_correct_though_it_does_not_match_exactly(box):
    references = ["df[df['points'] < 20]['name']",
                  "df.groupby('team').agg({'points': 'sum'})",
                  "df[df['team'] == 'red']['points'].mean()",
                  "df.sort_values('points', ascending=False).head(2)['name']"]
    predictions = ["df.loc[df.points < 20, 'name']",
                   "df.groupby('team')['points'].sum()",
                   "result = df.points[df.team == 'red'].sum() / 2",
                   "df.nlargest(2, 'points')['name']"]
    report = ExecutionEvaluator(references, [[TABLE]] * 4, box).score(predictions)
    assert report.outcomes == ["correct"] * 4
    assert text_to_code.exact_match(predictions, references) == 0.0


def test_order_counts_only_when_the_reference_sorts(box):
    references = ["df.sort_values('points')['name']", "df[df['points'] > 8]['name']"]
    predictions = ["df.sort_values('points', ascending=False)['name']",
                   "df[df['points'] > 8]['name'].iloc[::-1]"]
    report = ExecutionEvaluator(references, [[TABLE]] * 2, box).score(predictions)
    assert report.outcomes == ["wrong_result", "correct"]


def test_failure_kinds_are_classified_and_counted(box):
    predictions = ["df['points'].sum()", "df['points'].mean()", "df[df['points'] <",
                   "df['missing'].sum()", "while True: pass", "import os"]
    references = ["df['points'].sum()"] * len(predictions)
    report = ExecutionEvaluator(references, [[TABLE]] * len(predictions), box).score(predictions)
    assert report.outcomes == ["correct", "wrong_result", "syntax_error", "runtime_error", "timeout",
                               "forbidden"]
    table = report.table()
    assert table.loc["correct", "examples"] == 1 and table.loc["timeout", "share"] == pytest.approx(1 / 6)
    assert report.summary()["outcomes"]["syntax_error"] == 1


def test_a_reference_that_does_not_run_is_reported_not_scored(box):
    report = ExecutionEvaluator(["df['nope'].sum()", "df['points'].max()"], [[TABLE], [TABLE]],
                                box).score(["df['points'].max()", "df['points'].max()"])
    assert report.outcomes == [code_exec.REFERENCE_ERROR, "correct"]
    assert report.scored == 1 and report.accuracy == 1.0


@pytest.mark.parametrize("predicted, gold, ordered, same", [
    (pd.Series([1, 2], name="a"), pd.DataFrame({"b": [1, 2]}), False, True),  # Series vs 1-col frame
    (pd.Series([7]), 7, False, True),  # a one-cell result vs a scalar
    (3.0000001, 3, False, True),  # float tolerance, int vs float
    (pd.Series([2, 1]), pd.Series([1, 2]), False, True),
    (pd.Series([2, 1]), pd.Series([1, 2]), True, False),
    (pd.DataFrame({"x": [1]}), pd.DataFrame({"y": [1]}), False, False),  # rename answers
    (pd.Series([1, 2], index=pd.Index(["a", "b"], name="k")),
     pd.Series([1, 2], index=pd.Index(["a", "c"], name="k")), False, False),  # group keys count
    ("1998", 1998, False, False),
    (float("nan"), None, False, True),
])
def test_results_match(predicted, gold, ordered, same):
    assert results_match(canonical(predicted), canonical(gold), ordered) is same


@pytest.mark.parametrize("predicted, gold, same", [
    (10 ** 400, 73, False),  # once an OverflowError that stopped the evaluation
    (10 ** 400, 10 ** 400, True),  # integers compare exactly, whatever their size
    (10 ** 400 + 1, 10 ** 400, False),
    (-(10 ** 400), 1e300, False),
    (float("inf"), float("inf"), True),
    (float("nan"), 73, False),
    (pd.DataFrame({"a": [1, "x", None, 2.5]}), pd.DataFrame({"a": ["x", 1, 2.5, None]}), True),  # mixed types
    ([1, [2, [3, [4, [5]]]]], [1, [2, [3, [4, [5]]]]], True),  # nested containers
    ([1, [2, [3]]], [1, [2, [4]]], False),
    ({1: "a", "b": [1, 2]}, {1: "a", "b": [1, 2]}, True),
])
def test_results_match_never_raises(predicted, gold, same):
    assert results_match(canonical(predicted), canonical(gold)) is same


@pytest.mark.parametrize("malformed", [None, {}, {"kind": "frame"}, {"kind": "frame", "columns": [1], "rows": 5},
                                       {"kind": "scalar", "value": {"a": 1}}, {"kind": "list", "columns": None,
                                                                              "rows": [[[[[[[1]]]]]]]}])
def test_a_malformed_result_matches_nothing_and_raises_nothing(malformed):
    assert results_match(malformed, canonical(1)) is False
    assert results_match(canonical(1), malformed) is False


@pytest.mark.parametrize("reference, fixed", [
    ("df[['name', 'points']]", True),
    ("df.loc[df['points'] > 8, ['name', 'points']]", True),
    ("df.reindex(columns=['points', 'name'])", True),
    ("df[df['points'] > 8]", False),
    ("df.groupby('team').agg({'points': 'sum', 'name': 'count'})", False),
    ("df[df['team'].isin(['red', 'blue'])]", False),  # a list of values, not of columns
    ("df.sort_values(['team', 'points'])", False),
    ("df[", False),
])
def test_the_reference_fixes_the_column_order_only_by_an_explicit_column_list(reference, fixed):
    assert code_exec.column_order_fixed(reference) is fixed


def test_frames_match_by_column_set_unless_the_reference_orders_the_columns(box):
    references = ["df[df['points'] > 8]", "df.groupby('team').agg({'points': 'sum', 'name': 'count'})",
                  "df[['name', 'points']]", "df[['name', 'points']]", "df[df['points'] > 8]"]
    predictions = ["df[df['points'] > 8][['points', 'team', 'name']]",
                   "df.groupby('team').agg({'name': 'count', 'points': 'sum'})",
                   "df[['points', 'name']]", "df[['name', 'points']]",
                   "df[df['points'] > 8].rename(columns={'team': 'side'})"]
    report = ExecutionEvaluator(references, [[TABLE]] * 5, box).score(predictions)
    assert report.outcomes == ["correct", "correct", "wrong_result", "correct", "wrong_result"]


# --- the sandbox: nothing escapes, and the evaluation goes on -------------------------------------

ATTACKS = {
    "os.system": ("__import__('os').system('touch {marker}')", "forbidden"),
    "read /etc/passwd": ("open('/etc/passwd').read()", "forbidden"),  # .read: not an allowed attribute
    "write a file": ("open('{marker}', 'w').write('x')", "forbidden"),
    "infinite loop": ("while True:\n    pass", "timeout"),
    "memory bomb": ("'x' * (10 ** 10)", "memory_limit"),
    "numpy memory bomb": ("np.ones((10 ** 5, 10 ** 5))", "memory_limit"),
    "import socket": ("import socket\nsocket.socket()", "forbidden"),
    "dunder walk": ("().__class__.__base__.__subclasses__()", "forbidden"),
    "module via pandas": ("pd.io.common.os.system('touch {marker}')", "forbidden"),
    "pandas writer": ("df.to_csv('{marker}')", "forbidden"),
    "pandas writer by name": ("df.agg('to_pickle', '{marker}')", "forbidden"),
    "pandas reader": ("pd.read_csv('/etc/passwd')", "forbidden"),
    "generator frames": ("[(x for x in [1])][0].gi_frame.f_back", "forbidden"),
    "tampering with pandas": ("pd.DataFrame.sum = 1", "forbidden"),
    # eval is not in the namespace: a NameError at run time (a name that does not exist there, as
    # an unknown table's), not a refusal.
    "eval": ("eval('1 + 1')", "runtime_error"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_fail_and_the_evaluation_continues(box, tmp_path, name):
    marker = tmp_path / "escaped"
    code, expected = ATTACKS[name]
    code = code.format(marker=marker)
    report = ExecutionEvaluator(["df['points'].sum()"] * 2, [[TABLE]] * 2, box).score(
        [code, "df['points'].sum()"])
    assert report.outcomes == [expected, "correct"], report.errors
    assert expected != "runtime_error" or report.errors[0].startswith("NameError")
    assert not marker.exists()


# With the static check off, the classic escape reaches the real builtins; the kernel still stops
# it: the seccomp filter answers EPERM (Errno 1) before the rlimits are even consulted. Each
# snippet ends in a value so a failed call shows as its error. (tests/tasks/test_sandbox_redteam.py
# tries many more.)
ESCAPE = ("b = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
          ".__init__.__globals__['__builtins__']\n")
PROCESS_LAYER = {  # name: (code, status, what stops it)
    "read a file": (ESCAPE + "b['open']('/etc/passwd').read()", "runtime_error", "Errno 1]"),
    "write a file": (ESCAPE + "b['open']('{marker}', 'w').write('x')", "runtime_error", "Errno 1]"),
    # Through libc, so that it does not depend on whether the worker imported the socket module.
    "open a socket": (ESCAPE + "ct = b['__import__']('ctypes')\nfd = ct.CDLL(None, use_errno=True).socket(2, 1, 0)\n"
                      "if fd < 0:\n    raise b['OSError'](ct.get_errno(), 'socket')\nfd", "runtime_error", "Errno 1]"),
    "fork": (ESCAPE + "b['__import__']('os').fork()", "runtime_error", "Errno 1]"),
    "run a shell": (ESCAPE + "b['__import__']('os').system('touch {marker}')", "ok", None),
}


@pytest.mark.parametrize("name", list(PROCESS_LAYER))
def test_process_limits_hold_even_without_the_static_check(tmp_path, name):
    """The kernel refuses open, socket and fork (seccomp: EPERM, Errno 1)."""
    marker = tmp_path / "escaped"
    os.chmod(tmp_path, 0o777)  # so that only the process limits, not permissions, stop a write
    code, status, reason = PROCESS_LAYER[name]
    with Sandbox(timeout=2.0, memory_mb=256, static_check=False) as unchecked:
        run = unchecked.run(code.format(marker=marker), TABLE)
        assert run.status == status, run
        if reason:
            assert reason in run.error, run
        else:  # os.system reports that its shell could not be spawned (exit status 127)
            assert run.value["value"] == 127 << 8, run
        assert unchecked.run("df['points'].sum()", TABLE).value == {"kind": "scalar", "value": 73}
    assert not marker.exists()


def test_one_snippet_cannot_change_pandas_for_the_next():
    with Sandbox(timeout=2.0, static_check=False) as unchecked:
        tampered = unchecked.run("pd.Series.sum = lambda self: 42\ndf['points'].sum()", TABLE)
        assert tampered.value == {"kind": "scalar", "value": 42}
        assert unchecked.run("df['points'].sum()", TABLE).value == {"kind": "scalar", "value": 73}


def test_a_worker_that_dies_is_replaced_and_the_evaluation_continues():
    import signal
    import threading

    with Sandbox(timeout=5.0) as sandbox:
        worker = sandbox._all[0].process
        threading.Timer(0.5, lambda: os.killpg(worker.pid, signal.SIGKILL)).start()
        died = sandbox.run("while True:\n    pass", TABLE)  # the worker dies mid-snippet
        assert died.status == "runtime_error" and "worker stopped" in died.error
        assert sandbox.run("df['points'].sum()", TABLE).value == {"kind": "scalar", "value": 73}
        assert sandbox.restarts == 1 and sandbox._all[0].process.pid != worker.pid


@pytest.mark.parametrize("code", ["df.columns = ['a', 'b', 'c']\ndf['a']",
                                  "result = df[df['points'] < 20]"])
def test_ordinary_pandas_passes_the_static_check(code):
    code_exec.check_code(code, ["df"])


def test_code_with_a_result_variable_or_no_value(box):
    assert box.run("result = df['points'].max()", TABLE).value == {"kind": "scalar", "value": 31}
    run = box.run("x = 1", TABLE)
    assert run.status == "runtime_error" and "no value" in run.error


# --- tables -------------------------------------------------------------------------------------

def test_parse_context_reads_one_or_more_tables_and_nothing_else():
    context = ("head = pd.DataFrame(columns=['age', 'head_id'])\n"
               "management = pd.DataFrame(columns=['head_id', 'temporary_acting'])")
    assert table_context.parse_context(context) == {"head": ["age", "head_id"],
                                                    "management": ["head_id", "temporary_acting"]}
    assert table_context.parse_context("") == {}
    assert table_context.parse_context("df = pd.DataFrame(columns=") == {}
    assert table_context.parse_context("import os\ndf = load()") == {}


def test_synthesized_tables_hold_the_reference_literals_and_are_deterministic(box):
    context = "df = pd.DataFrame(columns=['player', 'years_for_rockets', 'points'])"
    code = "df[(df['years_for_rockets'] == '1998') & (df['points'] > 10)]['player'].count()"
    envs = table_context.example_environments(context, code, variants=3, seed=7)
    assert envs == table_context.example_environments(context, code, variants=3, seed=7)
    assert len(envs) == 3 and envs[0] != envs[1]
    for env in envs:
        rows = env["df"]["rows"]
        assert any(row[1] == "1998" for row in rows)
        assert all(isinstance(row[2], int) for row in rows)
    counts = [box.run(code, env).value["value"] for env in envs]
    assert all(isinstance(c, int) for c in counts) and max(counts) > 0


def test_known_tables_are_used_when_the_context_matches(tmp_path):
    path = tmp_path / "tables.json"
    path.write_text(json.dumps({"tables": [{"name": "df", "columns": ["a"], "rows": [[1], [2]]}]}))
    known = table_context.load_known_tables(str(path))
    envs = table_context.example_environments("df = pd.DataFrame(columns=['a'])", "df['a'].sum()", known)
    assert envs == [{"df": {"columns": ["a"], "rows": [[1], [2]]}}]
    assert table_context.environment_kind("df = pd.DataFrame(columns=['b'])", known) == "synthesized"
    with pytest.raises(FileNotFoundError, match="tables_source: tables file not found"):
        table_context.load_known_tables(str(tmp_path / "none.json"))


# --- tokenizer coverage ---------------------------------------------------------------------------

CODE = ["df.groupby('team').agg({'points': 'sum', 'games': 'mean'})", "df[df['points'] < 20]['name']",
        "df.rename(columns={'a': 'b'})", "a < b", "{'a': 1}", "df[df['x']<3]"]


@pytest.fixture
def t5_tokenizer(cache):
    from transformers import AutoTokenizer

    from tests import fixtures

    return AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "t5"))


def test_coverage_check_finds_what_t5_cannot_encode(t5_tokenizer):
    report = coverage.check_coverage(t5_tokenizer, CODE)
    assert set("{}<") <= set(report.unknown) and set("{}<") <= set(report.missing)
    assert report.texts_not_round_tripping == len(CODE)
    assert set(report.table()["character"]) >= {"'{'", "'}'", "'<'"}


def test_braces_and_less_than_round_trip_after_the_fix(t5_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    plain = ["What is the average points of players with team Rockets?",
             "df = pd.DataFrame(columns=['player', 'team'])"]
    ids_before = [t5_tokenizer(t)["input_ids"] for t in plain]
    fixed = coverage.add_missing_tokens(t5_tokenizer, coverage.check_coverage(t5_tokenizer, CODE).missing)
    for tokenizer in (fixed, _saved_and_loaded(fixed, tmp_path, AutoTokenizer)):
        report = coverage.check_coverage(tokenizer, CODE)
        assert report.unknown == {} and report.texts_not_round_tripping == 0, report.examples
        for text in CODE:
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert coverage.decode(tokenizer, ids) == text
        # Text without the new characters is tokenized exactly as before.
        assert [tokenizer(t)["input_ids"] for t in plain] == ids_before


def _saved_and_loaded(tokenizer, folder, auto):
    tokenizer.save_pretrained(folder)
    return auto.from_pretrained(folder)


def test_adding_tokens_alone_does_not_round_trip_on_t5(t5_tokenizer):
    """Why the fix also changes the pre-tokenizer: T5's drops the space before an added token."""
    t5_tokenizer.add_tokens(["<", "{", "}"])
    assert t5_tokenizer.decode(t5_tokenizer("a < b")["input_ids"], skip_special_tokens=True) != "a < b"


def test_a_byte_level_tokenizer_needs_nothing(cache):
    """The CodeT5 case: a byte-level BPE vocabulary encodes every character."""
    from transformers import AutoTokenizer

    from tests import fixtures

    tokenizer = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "roberta"))
    report = coverage.check_coverage(tokenizer, CODE)
    assert report.missing == [] and report.texts_not_round_tripping == 0
    assert coverage.add_missing_tokens(tokenizer, report.missing) is tokenizer


def test_new_embeddings_start_at_the_mean(cache, t5_tokenizer):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from tests import fixtures

    model = AutoModelForSeq2SeqLM.from_pretrained(fixtures.tiny_model_dir(cache, "t5"))
    before = model.get_input_embeddings().weight.detach().clone()
    tokenizer = coverage.add_missing_tokens(t5_tokenizer, ["{", "}", "<"])
    change = coverage.resize_embeddings(model, tokenizer, ["{", "}", "<"])
    weight = model.get_input_embeddings().weight
    assert change["embeddings_after"] == len(tokenizer) == before.shape[0] + 3
    for i in change["new_token_ids"]:
        assert torch.allclose(weight[i], before.mean(dim=0), atol=1e-6)
    batch = tokenizer(["df[df['a'] < 3]"], return_tensors="pt")
    assert torch.isfinite(model(**batch, labels=batch["input_ids"]).loss)


# --- labels, lengths, metrics ------------------------------------------------------------------------

def test_label_padding_is_masked_with_minus_100(cache, t5_tokenizer):
    from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq

    from tests import fixtures

    model = AutoModelForSeq2SeqLM.from_pretrained(fixtures.tiny_model_dir(cache, "t5"))
    targets = ["df['a'].sum()", "df[df['team'] == 'Rockets']['player'].count()"]
    features = text_to_code.tokenize_pairs(t5_tokenizer, ["q one", "q two"], targets, 64)
    rows = [{k: features[k][i] for k in features} for i in range(2)]
    batch = DataCollatorForSeq2Seq(t5_tokenizer, model=model, label_pad_token_id=-100)(rows)
    lengths = [len(ids) for ids in features["labels"]]
    assert (batch["labels"] != -100).sum().item() == sum(lengths)
    assert (batch["labels"][0, lengths[0]:] == -100).all()
    assert not (batch["labels"] == t5_tokenizer.pad_token_id).any()


def test_generation_budget_comes_from_the_data():
    assert text_to_code.generation_budget([12, 40, 64]) == 80
    assert text_to_code.generation_budget([10]) == 18
    assert text_to_code.generation_budget([200]) > 200


def test_text_metrics_and_template():
    assert text_to_code.exact_match([" a ", "b"], ["a", "c"]) == 0.5
    assert text_to_code.bleu(["df['a'].sum()"], ["df['a'].sum()"]) == pytest.approx(100.0)
    assert text_to_code.format_input("q?", " ctx ") == "<question> q? <context> ctx"
    fields = ["question", "context"]
    assert data.check_template(text_to_code.DEFAULT_INPUT_TEMPLATE, fields, "input_template")
    with pytest.raises(ValueError, match="input_template='{question}' must contain"):
        data.check_template("{question}", fields, "input_template")
    with pytest.raises(ValueError, match="input_template=.*not a valid template"):  # a lone brace
        data.check_template("{question} {context} }", fields, "input_template")


def test_nearest_neighbour_baseline_returns_the_closest_training_answer():
    answers = text_to_code.nearest_neighbour_answers(
        ["how many players", "average points of teams"], ["A", "B"], ["the average points", "players how many"])
    assert answers == ["B", "A"]


# --- the notebook, end to end on the tiny T5 ------------------------------------------------------------

@pytest.fixture(scope="module")
def run(smoke_run):
    code, folder = smoke_run("text_to_pandas")
    assert code == 0
    return folder / "text_to_pandas"


def test_smoke_run_record(run):
    rec = record.read_record(run)
    assert tuple(rec) == record.RECORD_FIELDS and rec["project"] == "text_to_pandas"
    assert rec["primary_metric"] == "execution_accuracy"
    metrics = rec["metrics"]
    assert metrics["reference_self_check"] == 1.0
    assert 0.0 <= metrics["execution_accuracy"] <= 1.0 and metrics["reference_errors"] == 0
    # References that cannot tell answers apart (empty or constant on every table) are counted
    # and left out of the score, for the model and the baseline alike.
    left_out = metrics["uninformative_references"]
    assert sum(metrics["outcomes"].values()) == metrics["scored"] == rec["data"]["test"] - left_out
    assert sum(metrics["uninformative_reasons"].values()) == left_out
    assert rec["baselines"]["nearest_neighbour"]["scored"] == metrics["scored"]
    assert set(metrics["outcomes"]) == set(code_exec.OUTCOMES)
    assert {"exact_match", "bleu"} <= set(metrics)
    # One denominator per metric, named in the record: the scored rows, and all rows apart.
    assert metrics["denominator"]["scored_rows"] == metrics["scored"]
    assert metrics["denominator"]["test_rows"] == rec["data"]["test"]
    assert metrics["measured_on"]["exact_match"] == metrics["measured_on"]["execution_accuracy"] == text_to_code.SCORED
    assert set(metrics["measured_on"]) == set(text_to_code.MEASURED_ON) - {"execution_accuracy_unseen_tables"}
    for name in ("execution_accuracy", "exact_match", "execution_accuracy_all_rows"):
        assert metrics["intervals"][name]["low"] <= metrics[name] <= metrics["intervals"][name]["high"]
    assert "vs_nearest_neighbour" in metrics["differences"]
    assert set(rec["baselines"]["nearest_neighbour"]["outcomes"]) == set(code_exec.OUTCOMES)
    # The containment the snippets ran under, and the allowlist refusing no sample reference.
    sandbox = rec["data"]["sandbox"]
    assert "seccomp" in sandbox["containment"] and "static-check" in sandbox["containment"]
    assert sandbox["references_refused"] == 0 and sandbox["refused_by_rule"] == {}


def test_smoke_run_checks_overlap_coverage_and_lengths(run):
    data = record.read_record(run)["data"]
    assert data["overlap"]["same_question"] == text2pandas.LEAKED
    # The test split is the source's, whole; training gave up its copies of test questions.
    assert data["test"] == text2pandas.N_TEST
    assert sum(data["removed_as_repeats_of_a_test_question"].values()) == text2pandas.LEAKED
    assert data["test_tables_in_training"] == {"rows": text2pandas.N_TEST, "test_rows": text2pandas.N_TEST,
                                               "share": 1.0}
    assert set("{}<") <= set(data["coverage_before"]["unknown_characters"])
    assert data["coverage_before"]["texts_not_round_tripping"] > 0
    assert data["coverage_after"]["texts_not_round_tripping"] == 0
    assert set("{}<") <= set(data["added_tokens"])
    assert data["generation_max_new_tokens"] > 20 and data["answers_truncated"] == 0.0


def test_smoke_run_learns_something(run):
    states = sorted(run.glob("checkpoints/*/trainer_state.json"))
    history = json.loads(states[-1].read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0] / 2


def test_smoke_run_leaves_predictions_plots_and_a_model_that_writes_braces(run):
    from transformers import AutoTokenizer

    predictions = pd.read_csv(run / "test_predictions.csv", keep_default_na=False)
    assert len(predictions) == record.read_record(run)["data"]["test"]
    assert set(predictions["outcome"]) <= set(code_exec.OUTCOMES)
    assert {"question", "reference", "generated", "baseline", "baseline_outcome"} <= set(predictions)
    for plot in ("loss_curves.png", "execution_outcomes.png"):
        assert (run / plot).stat().st_size > 5000
    assert (run / "model" / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    for text in CODE:
        assert coverage.decode(tokenizer, tokenizer(text)["input_ids"]) == text


def _run_bad(tmp_path, **overrides):
    return run_smoke_project("text_to_pandas", tmp_path, **overrides)


@pytest.mark.slow
def test_missing_answer_column_is_named(cache, tmp_path):
    result = _run_bad(tmp_path, answer_column="code")
    assert result.status == "failed"
    assert "answer_column='code' is not a column" in result.error
    assert "columns present: question, context, answer" in result.error


@pytest.mark.slow
def test_bad_input_template_is_named(cache, tmp_path):
    result = _run_bad(tmp_path, input_template="<question> {question}")
    assert result.status == "failed" and "input_template=" in result.error and "{context}" in result.error
