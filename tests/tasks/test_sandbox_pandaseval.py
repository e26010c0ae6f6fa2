"""The allowlist on honest pandas it was not written for: PandasEval (CERT paper, Microsoft, MIT
licence), 101 problems with human-written canonical solutions, read from the shared data folder
(`../shared/data/pandaseval/`, provenance in its README; never copied into the package).

Each solution is adapted the same way, by rule, never by hand: the prompt (a function stub or a
few module-level lines) plus the solution (the first of its alternatives that parses), imports
dropped. A function's body becomes the snippet, its `return x` becoming `result = x`, its
parameters becoming tables whose columns are the string keys and `columns=[...]` of the
`pd.DataFrame(...)` calls in the problem's test; module-level `name = pd.DataFrame(...)` lines
become tables with their own columns, the rest the snippet. The refusal rate by
rule is printed (`pytest -s`) and bounded; the allowlist is not tuned to these answers name by
name: they are a sample of honest pandas, not the whole of it.
"""

from __future__ import annotations

import ast
import json
import warnings
from collections import Counter

from conftest import ROOT
from nbutils.sandbox.allowlist import refusal

PANDASEVAL = ROOT.parent / "shared" / "data" / "pandaseval" / "PandasEval.jsonl"


def _frame_columns(source) -> list[str]:
    """String keys of `pd.DataFrame({...})` and items of `columns=[...]` in `source` (text or a tree)."""
    try:
        tree = ast.parse(source) if isinstance(source, str) else source
    except SyntaxError:
        return []
    columns = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("DataFrame", "from_dict"):
            for arg in node.args[:1]:
                if isinstance(arg, ast.Dict):
                    columns += [k.value for k in arg.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            for keyword in node.keywords:
                if keyword.arg == "columns" and isinstance(keyword.value, (ast.List, ast.Tuple)):
                    columns += [e.value for e in keyword.value.elts
                                if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return columns


class _ReturnToResult(ast.NodeTransformer):
    def visit_Return(self, node):
        return ast.copy_location(ast.Assign(targets=[ast.Name("result", ast.Store())],
                                            value=node.value or ast.Constant(None)), node)

    def visit_FunctionDef(self, node):
        return node  # a helper's own return stays


def adapted(problem: dict) -> tuple[str, dict] | None:
    """The problem's solution as a snippet and its tables, or None if prompt + solution do not
    parse as Python."""
    for solution in problem["canonical_solution"]:
        try:
            with warnings.catch_warnings():  # a regex in a plain string: the data's, not ours
                warnings.simplefilter("ignore", DeprecationWarning)
                tree = ast.parse(problem["prompt"] + solution)
            break
        except SyntaxError:
            continue
    else:
        return None
    body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    columns = _frame_columns(problem["test"]) + _frame_columns(problem["prompt"])
    entry = next((s for s in body if isinstance(s, ast.FunctionDef) and s.name == problem["entry_point"]), None)
    if entry is None:
        tables, code = {}, []
        for statement in body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
                    and isinstance(statement.targets[0], ast.Name) and isinstance(statement.value, ast.Call) \
                    and ast.unparse(statement.value.func) in ("pd.DataFrame", "pd.DataFrame.from_dict"):
                tables[statement.targets[0].id] = {"columns": _frame_columns(statement) or columns}
            else:
                code.append(statement)
        return ast.unparse(ast.Module(code, [])), tables
    statements = [s for s in entry.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    statements = [_ReturnToResult().visit(s) for s in statements]
    others = [s for s in body if s is not entry]
    code = ast.unparse(ast.fix_missing_locations(ast.Module(others + statements, [])))
    return code, {arg.arg: {"columns": columns} for arg in entry.args.args}


def refusal_report() -> dict:
    problems = [json.loads(line) for line in PANDASEVAL.read_text().splitlines() if line.strip()]
    rules, examples, not_adapted = Counter(), {}, 0
    for problem in problems:
        snippet = adapted(problem)
        if snippet is None:
            not_adapted += 1
            continue
        rule = refusal(*snippet)
        if rule is not None:
            rules[rule] += 1
            examples.setdefault(rule, []).append(problem["task_id"])
    checked = len(problems) - not_adapted
    return {"problems": len(problems), "checked": checked, "not_adapted": not_adapted,
            "refused": sum(rules.values()), "refused_share": round(sum(rules.values()) / checked, 3),
            "by_rule": dict(rules.most_common()), "examples": examples}


def test_pandaseval_human_answers_are_rarely_refused_and_each_refusal_is_named():
    assert PANDASEVAL.is_file(), f"PandasEval is expected at {PANDASEVAL} (see the shared data README)"
    report = refusal_report()
    print(json.dumps(report, indent=1))
    assert report["checked"] >= 95, report  # about 98 of the 101 adapt (the data's README)
    # Round 3 refused 7 of 98; what is left must be a construct the allowlist refuses on purpose
    # (see the report's examples), never one of the idioms named in issue 24.
    assert report["refused"] <= 3, report
    assert "syntax_error" not in report["by_rule"], report


def test_the_adaptation_keeps_the_solution_and_finds_the_tables():
    problems = {p["task_id"]: p for p in map(json.loads, PANDASEVAL.read_text().splitlines())}
    code, tables = adapted(problems["PandasEval/0"])  # a function: df and col_name are tables
    assert code == "result = df.dropna(subset=[col_name])" and set(tables) == {"df", "col_name"}
    assert {"A", "B", "C"} <= set(tables["df"]["columns"])
    code, tables = adapted(problems["PandasEval/50"])  # module level: the frame is a table
    assert "df.A + df.B" in code and "pd.DataFrame" not in code and tables["df"]["columns"] == ["A", "B"]
