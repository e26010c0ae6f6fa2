"""Synthesized tables for execution accuracy: neither too lenient (a wrapped filter that keeps
nothing on any table lets every empty answer pass) nor too strict (ties that make `idxmax` and
`sort_values(...).iloc[0]` disagree)."""

from types import SimpleNamespace

import pandas as pd
import pytest

from nbutils.sandbox import code_exec
from nbutils.tasks.text_to_pandas import table_context

CONTEXT = "df = pd.DataFrame(columns=['player', 'year', 'team', 'points'])"


def run(code, env):
    """Trusted test snippets run directly on the synthesized frames (the sandbox is tested
    elsewhere); the result in `code_exec.canonical` form, as the evaluator compares it."""
    frames = {name: pd.DataFrame(t["rows"], columns=t["columns"]) for name, t in env.items()}
    return code_exec.canonical(eval(code, {"pd": pd, **frames}))


def judged_equal(prediction, reference, env):
    """The comparison the notebook applies today: `results_match`, in order if the reference
    orders its rows."""
    return code_exec.results_match(run(prediction, env), run(reference, env),
                                   code_exec.is_order_sensitive(reference))


WRAPPED = [
    "df[df['year'].astype(int) > 1998]['player'].count()",
    "df[df['year'].astype(int) == 1998]['player'].count()",
    "df[df['team'].str.lower() == 'rockets']['points'].sum()",
    "df[df['team'].eq('rockets')]['player'].count()",
    "df[df['team'].str.strip().isin(['rockets', 'bulls'])]['player'].count()",
    "df[df['points'].astype(float).between(20, 30)]['player'].count()",
    "df[df['year'].astype(str).str.contains('199')]['player'].count()",
]


@pytest.mark.parametrize("reference", WRAPPED)
def test_a_wrapped_filter_keeps_rows_on_some_synthesized_table(reference):
    envs = table_context.example_environments(CONTEXT, reference, variants=3, seed=5)
    counts = [run(reference, env)["value"] for env in envs]
    assert any(counts), f"{reference} finds nothing on every table: {counts}"
    results = [run(reference, env) for env in envs]
    assert table_context.uninformative_reason(results) is None


def test_astype_on_a_column_also_compared_as_text_keeps_numbers_as_text():
    reference = "df[(df['year'].astype(int) > 1998) | (df['year'] == '1995')]['player'].count()"
    for env in table_context.example_environments(CONTEXT, reference, variants=3, seed=2):
        years = [row[1] for row in env["df"]["rows"]]
        assert all(isinstance(y, str) for y in years), "stored as text, as in the real data"
        assert {"1994", "1995", "1996"} & set(years)
        run(reference, env)  # runs: every value converts


def test_the_predictions_literals_are_seeded_too():
    reference = "df[df['team'] == 'rockets']['player'].count()"
    prediction = "df[df['team'] == 'bulls']['player'].count()"
    alone = table_context.example_environments(CONTEXT, reference, variants=3, seed=1)
    assert not any(row[2] == "bulls" for env in alone for row in env["df"]["rows"])
    both = table_context.example_environments(CONTEXT, reference, variants=3, seed=1,
                                              predictions=[prediction, "not code ("])
    teams = [row[2] for env in both for row in env["df"]["rows"]]
    assert "bulls" in teams and "rockets" in teams
    # a prediction filtering on another value is now seen to differ on some table
    assert not all(judged_equal(prediction, reference, env) for env in both)


SAME_ANSWERS = [
    ("df.sort_values('points', ascending=False).iloc[0]['player']", "df.loc[df['points'].idxmax(), 'player']"),
    ("df.sort_values('points').iloc[0]['player']", "df.loc[df['points'].idxmin(), 'player']"),
    ("df.sort_values('points', ascending=False).head(3)", "df.nlargest(3, 'points')"),
    ("df.sort_values('year').head(2)['player']", "df.nsmallest(2, 'year')['player']"),
]


@pytest.mark.parametrize("reference,prediction", SAME_ANSWERS)
def test_idxmax_and_sort_values_agree_on_every_seed(reference, prediction):
    disagreements = [seed for seed in range(200)
                     for env in table_context.example_environments(CONTEXT, reference, variants=3, seed=seed)
                     if not judged_equal(prediction, reference, env)]
    assert not disagreements, f"judged different on seeds {sorted(set(disagreements))[:10]}"


def test_grouped_columns_keep_repeated_values():
    reference = "df.groupby('team')['points'].sum().idxmax()"
    for env in table_context.example_environments(CONTEXT, reference, variants=3, seed=3):
        teams = [row[2] for row in env["df"]["rows"]]
        points = [row[3] for row in env["df"]["rows"]]
        assert len(set(teams)) < len(teams), "groups of several rows"
        assert len(set(points)) == len(points), "distinct values: no tied sums"


def test_uninformative_references_are_found_and_left_out():
    empty = [code_exec.canonical(pd.DataFrame({"a": []})), code_exec.canonical(0)]
    assert table_context.uninformative_reason(empty) == "empty"
    constant = [code_exec.canonical(3), code_exec.canonical(3), code_exec.canonical(3)]
    assert table_context.uninformative_reason(constant) == "constant"
    assert table_context.uninformative_reason([code_exec.canonical(3)]) is None  # one known table
    assert table_context.uninformative_reason([code_exec.canonical(3), code_exec.canonical(4)]) is None

    def ok(value):
        return SimpleNamespace(status="ok", value=code_exec.canonical(value))

    gold = [[ok(1), ok(2)], [ok(0), ok(0)], [ok(5), ok(5)], [SimpleNamespace(status="runtime_error", value=None)]]
    assert table_context.uninformative_examples(gold) == {1: "empty", 2: "constant"}
    report = code_exec.ExecutionReport(["correct", "correct", "correct", code_exec.REFERENCE_ERROR],
                                       ["", "", "", "boom"])
    scored = table_context.without_examples(report, [1, 2])
    assert scored.outcomes == ["correct", code_exec.REFERENCE_ERROR] and scored.scored == 1


def test_row_counts_differ_between_variants():
    envs = table_context.example_environments(CONTEXT, "len(df)", variants=3, seed=0)
    assert len({len(env["df"]["rows"]) for env in envs}) == 3


def test_replace_keys_and_close_float_thresholds_tell_answers_apart():
    context = "df = pd.DataFrame(columns=['title', 'genre', 'rating', 'votes'])"
    cases = [("df['genre'].replace({'drama': 'scifi'})", "df['genre'].replace({'drama': 'horror'})"),
             ("df[df['rating'] <= 8.2]['title']", "df[df['rating'] <= 8.4]['title']"),
             ("df[df['rating'] > 7.9]['votes'].sum()", "df[df['rating'] > 8.0]['votes'].sum()")]
    for reference, prediction in cases:
        envs = table_context.example_environments(context, reference, variants=3, seed=11,
                                                  predictions=[prediction])
        assert not all(judged_equal(prediction, reference, env) for env in envs), reference
