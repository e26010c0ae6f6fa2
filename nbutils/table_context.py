"""The tables a text-to-pandas example runs against: parsed from its `context`, looked up among
known tables, or synthesized.

In text2pandas the `context` is the schema as code, one line per table:
`df = pd.DataFrame(columns=['player', 'years_for_rockets'])`. The real data set ships no rows,
so execution needs tables made up to fit each example, as test-suite accuracy does for
text-to-SQL (Zhong et al., 2020): random rows whose values include the literals of the
reference code (so its filters keep some rows), several such tables per example, and a
prediction counts as correct only if it matches the reference on all of them. Where real rows
are known (the sample data's `tables.json`), they are used instead.

A table is `{"columns": [...], "rows": [[...], ...]}`; an environment maps table names to tables.
"""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path


def parse_context(context: str) -> dict[str, list[str]]:
    """Table name -> columns, from `name = pd.DataFrame(columns=[...])` lines.

    Statements of any other shape are skipped; an empty or unparsable context gives {}.
    Only literals are read (nothing is executed).
    """
    try:
        tree = ast.parse(context or "")
    except SyntaxError:
        return {}
    schema: dict[str, list[str]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name != "DataFrame":
            continue
        for keyword in node.value.keywords:
            if keyword.arg == "columns":
                try:
                    columns = ast.literal_eval(keyword.value)
                except ValueError:
                    continue
                if isinstance(columns, (list, tuple)) and all(isinstance(c, str) for c in columns):
                    schema[node.targets[0].id] = list(columns)
    return schema


def load_known_tables(path: str | Path, param: str = "tables_source") -> dict[tuple, dict]:
    """Read a tables file ({"tables": [{"name", "columns", "rows"}, ...]}) into
    {(name, columns): table}; the key is what a context declares."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{param}: tables file not found: {path.resolve()}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
        raise ValueError(f"{param}={str(path)!r}: expected {{\"tables\": [{{\"name\", \"columns\", "
                         "\"rows\"}, ...]}")
    known = {}
    for i, table in enumerate(data["tables"]):
        missing = [k for k in ("name", "columns", "rows") if k not in table]
        if missing:
            raise ValueError(f"{param}={str(path)!r}: table {i} lacks {missing}")
        known[(table["name"], tuple(table["columns"]))] = {"columns": list(table["columns"]),
                                                         "rows": table["rows"]}
    return known


# --- synthesized tables ------------------------------------------------------------------------

def _column_of(node, columns: set[str]) -> str | None:
    """`df['col']` or `df.col` (any table) -> 'col' if it is a column of the schema."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        value = node.slice.value
        return value if isinstance(value, str) and value in columns else None
    if isinstance(node, ast.Attribute) and node.attr in columns:
        return node.attr
    return None


def _literal(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)):
        return -node.operand.value
    return None


def literals_by_column(code: str, columns) -> dict[str, list]:
    """Literals the code compares each column with: `df['year'] == '1998'` -> {'year': ['1998']};
    also `.isin([...])`, `.between(a, b)` and `.str.contains('x')`."""
    columns = set(columns)
    found: dict[str, list] = {}
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return found

    def add(column, values):
        for value in values:
            if value is not None and value not in found.setdefault(column, []):
                found[column].append(value)

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literals = [_literal(o) for o in operands]
            for operand in operands:
                column = _column_of(operand, columns)
                if column:
                    add(column, literals)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, owner = node.func.attr, node.func.value
            if method in ("isin", "between"):
                column = _column_of(owner, columns)
                values = []
                for arg in node.args:
                    items = arg.elts if isinstance(arg, (ast.List, ast.Tuple, ast.Set)) else [arg]
                    values += [_literal(item) for item in items]
                if column:
                    add(column, values)
            elif method in ("contains", "startswith", "endswith") and isinstance(owner, ast.Attribute) \
                    and owner.attr == "str":
                column = _column_of(owner.value, columns)
                if column and node.args and isinstance(_literal(node.args[0]), str):
                    text = _literal(node.args[0])
                    add(column, [text, f"{text} {column}", f"{column} {text}"])
    return found


def _uses_string_methods(code: str, column: str) -> bool:
    return f"['{column}'].str" in code or f'["{column}"].str' in code or f".{column}.str" in code


def synthesize_tables(schema: dict[str, list[str]], code: str, seed: int | str, n_rows: int = 10) -> dict:
    """Random tables for `schema` whose values include the literals `code` compares columns with.

    A column compared with strings holds strings (half of them those literals), one compared with
    numbers holds numbers around them; a column with no literal holds small integers, or strings
    if the code calls `.str` on it. Same seed, same tables.
    """
    rng = random.Random(seed)
    all_columns = [c for columns in schema.values() for c in columns]
    literals = literals_by_column(code, all_columns)
    environment = {}
    for name, columns in schema.items():
        values_by_column = []
        for column in columns:
            pool = literals.get(column, [])
            strings = [v for v in pool if isinstance(v, str)]
            numbers = [v for v in pool if isinstance(v, (int, float))]
            if strings or (not numbers and _uses_string_methods(code, column)):
                fill = [f"{column}_{i}" for i in range(1, 4)]
                values = [rng.choice(strings) if strings and rng.random() < 0.5 else rng.choice(fill)
                          for _ in range(n_rows)]
            elif numbers:
                as_float = any(isinstance(v, float) for v in numbers)
                low, high = min(numbers) - 5, max(numbers) + 5
                near = [v + d for v in numbers for d in (-1, 0, 1)]
                values = [rng.choice(near) if rng.random() < 0.5 else
                          (round(rng.uniform(low, high), 2) if as_float else rng.randint(int(low), int(high)))
                          for _ in range(n_rows)]
            else:
                values = [rng.randint(1, 20) for _ in range(n_rows)]
            values_by_column.append(values)
        environment[name] = {"columns": list(columns), "rows": [list(row) for row in zip(*values_by_column)]}
    return environment


def example_environments(context: str, code: str, known: dict | None = None, variants: int = 3,
                         seed: int = 0, n_rows: int = 10) -> list[dict]:
    """The table environments one example runs against: its known tables if every table its
    context declares is known, else `variants` synthesized ones. Empty if the context declares
    no table (then the reference cannot run, and the example is reported, not scored)."""
    schema = parse_context(context)
    if not schema:
        return []
    known = known or {}
    keys = [(name, tuple(columns)) for name, columns in schema.items()]
    if all(key in known for key in keys):
        return [{name: known[key] for name, key in zip(schema, keys)}]
    return [synthesize_tables(schema, code, seed=f"{seed}:{v}", n_rows=n_rows) for v in range(variants)]


def environment_kind(context: str, known: dict | None = None) -> str:
    """What `example_environments` gives this example: "known rows", "synthesized" or
    "no tables declared"."""
    schema = parse_context(context)
    if not schema:
        return "no tables declared"
    known = known or {}
    return "known rows" if all((n, tuple(c)) in known for n, c in schema.items()) else "synthesized"


# --- the upstream single-column form: `table: name (col : type , ...)` + `question: ...` -------

import re as _re

_SCHEMA_LINE = _re.compile(r"^\s*table:\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", _re.I)
_SCHEMA_COLUMN = _re.compile(r"\s*([^:,]+?)\s*:\s*([^,]+?)\s*(?:,|$)")


def parse_schema_text(text: str) -> tuple[dict[str, list[str]], str] | None:
    """(table name -> columns, question) from the single-column form's `Input`:
    `table: df (player : object , team : object)` lines, then `question: ...` (the question may
    run over several lines). None when there is no table line or no question."""
    if not isinstance(text, str):
        return None
    schema: dict[str, list[str]] = {}
    question_lines: list[str] | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if question_lines is not None:
            question_lines.append(line)
            continue
        match = _SCHEMA_LINE.match(line)
        if match:
            columns = [m.group(1) for m in _SCHEMA_COLUMN.finditer(match.group(2))]
            if columns:
                schema[match.group(1)] = columns
        elif line.strip().lower().startswith("question:"):
            question_lines = [line.strip()[len("question:"):]]
    question = " ".join(part.strip() for part in question_lines or []).strip()
    return (schema, question) if schema and question else None


def context_from_schema(schema: dict[str, list[str]]) -> str:
    """The schema as the code-form context the rest of the notebook reads:
    `name = pd.DataFrame(columns=[...])`, one line per table."""
    return "\n".join(f"{name} = pd.DataFrame(columns={columns!r})" for name, columns in schema.items())
