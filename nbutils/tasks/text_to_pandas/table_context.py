"""The tables a text-to-pandas example runs against: parsed from its `context`, looked up among
known tables, or synthesized.

In text2pandas the `context` is the schema as code, one line per table:
`df = pd.DataFrame(columns=['player', 'years_for_rockets'])`. The real data set ships no rows,
so execution needs tables made up to fit each example, as test-suite accuracy does for
text-to-SQL (Zhong et al., 2020): random rows whose values include the literals of the
reference code and of the code being scored (so their filters keep some rows, also through
wrappers such as `.astype(int)` or `.str.lower()`), distinct values elsewhere (so ties never
decide between `idxmax` and `sort_values(...).iloc[0]`), several such tables per example, and a
prediction counts as correct only if it matches the reference on all of them. A reference whose
result is empty, or the same, on every table cannot tell a right answer from a wrong one: such
examples are found (`uninformative_examples`) and left out of the score. Where real rows
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


# Methods that change how a column's values look but not which rows a comparison keeps, given
# the right values: `df['year'].astype(int) > 1998`, `df['name'].str.lower() == 'x'`.
NUMERIC_WRAPPERS = frozenset({"astype", "to_numeric", "abs", "round", "fillna", "int", "float"})
TEXT_WRAPPERS = frozenset({"lower", "upper", "strip", "lstrip", "rstrip", "title", "casefold",
                           "capitalize"})
COMPARISON_METHODS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
# Methods whose column is better drawn from a few repeated values (groups, counts of values).
GROUPING_METHODS = frozenset({"value_counts", "nunique", "unique", "drop_duplicates", "duplicated",
                              "mode"})


def _column_through(node, columns: set[str]) -> tuple[str | None, str | None]:
    """The column under value-preserving wrappers, and how it is wrapped: `df['y'].astype(int)`
    -> ('y', 'numeric'), `df.name.str.lower()` -> ('name', 'text'), `df['y']` -> ('y', None)."""
    kind = None
    while True:
        column = _column_of(node, columns)
        if column:
            return column, kind
        if isinstance(node, ast.Attribute) and node.attr in ("str", "values", "array"):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in NUMERIC_WRAPPERS | TEXT_WRAPPERS:
            if node.func.attr == "to_numeric" and node.args:  # pd.to_numeric(df['y'])
                node, kind = node.args[0], "numeric"
                continue
            if node.func.attr == "astype":
                target = node.args[0] if node.args else None
                name = getattr(target, "id", None) or getattr(target, "value", None)
                kind = "numeric" if name in ("int", "float", "int64", "float64", "int32") else \
                    "text" if name == "str" else kind
            elif node.func.attr in TEXT_WRAPPERS:
                kind = "text"
            elif kind is None:
                kind = "numeric"
            node = node.func.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("int", "float") and len(node.args) == 1:
            node, kind = node.args[0], "numeric"
        else:
            return None, None


def _literal(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)):
        return -node.operand.value
    return None


def _parse_all(codes) -> list[ast.AST]:
    trees = []
    for code in [codes] if isinstance(codes, str) else codes:
        try:
            trees.append(ast.parse(code or ""))
        except (SyntaxError, ValueError):
            continue  # a prediction that does not parse gives no literals
    return trees


def literals_by_column(code, columns) -> dict[str, list]:
    """Literals the code compares each column with: `df['year'] == '1998'` -> {'year': ['1998']};
    also through wrappers (`.astype(int) > 1998`, `.str.lower() == 'x'`), as method comparisons
    (`.eq(x)`, `.gt(x)`, ...), `.isin([...])`, `.between(a, b)` and `.str.contains('x')`.
    `code` is one snippet or several (a reference and predictions): their literals are merged,
    the first snippet's first."""
    return _column_facts(code, columns)[0]


def _column_facts(code, columns) -> tuple[dict[str, list], dict[str, str], set[str], set[str]]:
    """(literals by column, wrapper kind by column, grouping columns, join columns) of one or
    more snippets."""
    columns = set(columns)
    found: dict[str, list] = {}
    kinds: dict[str, str] = {}
    grouping: set[str] = set()
    joins: set[str] = set()

    def add(column, kind, values):
        if kind and kinds.get(column) != "numeric":
            kinds[column] = kind
        for value in values:
            if value is not None and value not in found.setdefault(column, []):
                found[column].append(value)

    for tree in _parse_all(code):
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                literals = [_literal(o) for o in operands]
                for operand in operands:
                    column, kind = _column_through(operand, columns)
                    if column:
                        add(column, kind, literals)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                method, owner = node.func.attr, node.func.value
                if method in COMPARISON_METHODS | {"isin", "between"}:
                    column, kind = _column_through(owner, columns)
                    values = []
                    for arg in node.args:
                        items = arg.elts if isinstance(arg, (ast.List, ast.Tuple, ast.Set)) else [arg]
                        values += [_literal(item) for item in items]
                    if column:
                        add(column, kind, values)
                elif method == "replace" and node.args:
                    # `df['genre'].replace({'drama': 'scifi'})` or `.replace('drama', 'scifi')`:
                    # without 'drama' in the column both sides of any replace are no-ops.
                    column, kind = _column_through(owner, columns)
                    first = node.args[0]
                    values = ([_literal(k) for k in first.keys if k is not None]
                              if isinstance(first, ast.Dict) else [_literal(a) for a in node.args[:1]])
                    if column:
                        add(column, kind, values)
                elif method in ("contains", "startswith", "endswith", "match", "fullmatch") \
                        and isinstance(owner, ast.Attribute) and owner.attr == "str":
                    column, _ = _column_through(owner.value, columns)
                    if column and node.args and isinstance(_literal(node.args[0]), str):
                        text = _literal(node.args[0])
                        add(column, "text", [text, f"{text} {column}", f"{column} {text}"])
                elif method == "groupby":
                    names = [*node.args, *(k.value for k in node.keywords if k.arg == "by")]
                    for arg in names:
                        for item in arg.elts if isinstance(arg, (ast.List, ast.Tuple)) else [arg]:
                            value = _literal(item)
                            if isinstance(value, str) and value in columns:
                                grouping.add(value)
                            else:
                                column, _ = _column_through(item, columns)
                                if column:
                                    grouping.add(column)
                elif method in GROUPING_METHODS:
                    column, _ = _column_through(owner, columns)
                    if column:
                        grouping.add(column)
                elif method in ("merge", "join"):
                    for keyword in node.keywords:
                        if keyword.arg in ("on", "left_on", "right_on"):
                            value = keyword.value
                            for item in value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]:
                                if isinstance(_literal(item), str) and _literal(item) in columns:
                                    joins.add(_literal(item))
    return found, kinds, grouping, joins


def _uses_string_methods(code, column: str) -> bool:
    codes = [code] if isinstance(code, str) else list(code)
    return any(f"['{column}'].str" in c or f'["{column}"].str' in c or f".{column}.str" in c
               for c in codes if isinstance(c, str))


WIDE = 1_000_000  # unseeded numbers are drawn without repeats from this many values


def _literal_rows(rng, n_rows, share) -> set[int]:
    """Which rows hold a literal: `share` of them exactly (so tables made with different
    shares give different counts of matches), at random places; no share: each row by chance."""
    if share is None:
        share = rng.uniform(0.25, 0.75)
        return {i for i in range(n_rows) if rng.random() < share}
    return set(rng.sample(range(n_rows), min(n_rows, max(1, round(share * n_rows)))))


def _column_values(rng, column, pool, kind, grouping, text, n_rows, share=None):
    """One column's values: seeded with its literals, else distinct (no ties to break), or a few
    repeated values for a column the code groups or counts by."""
    strings = [v for v in pool if isinstance(v, str)]
    numbers = [v for v in pool if isinstance(v, (int, float))]
    numeric_strings = [float(v) for v in strings if _is_number(v)]
    if kind == "numeric" and strings and len(numeric_strings) == len(strings):
        # `df['year'].astype(int) > 1998` next to `df['year'] == '1998'`: numbers stored as
        # text, as in the real data, so both run.
        numbers = numbers + [int(v) if v.is_integer() else v for v in numeric_strings]
        values = _number_values(rng, numbers, grouping, n_rows, share)
        return [str(v) for v in values]
    if strings or (not numbers and text):
        if kind == "text":  # `.str.lower() == 'x'`: also 'X' and 'X'-like spellings
            strings = list(dict.fromkeys(v for s in strings for v in (s, s.upper(), s.title())))
        fill = ([f"{column}_{i}" for i in range(1, rng.randint(2, 5) + 1)] if grouping else
                [f"{column}_{i}" for i in rng.sample(range(1, WIDE), n_rows)])
        values, unused = [], list(fill)
        chosen = _literal_rows(rng, n_rows, share)
        for i in range(n_rows):
            if strings and i in chosen:
                values.append(rng.choice(strings))
            else:
                values.append(unused.pop() if not grouping and unused else rng.choice(fill))
        return values
    if numbers:
        return _number_values(rng, numbers, grouping, n_rows, share)
    if grouping:
        few = rng.sample(range(1, WIDE), rng.randint(2, 5))  # how many groups varies by table
        return [rng.choice(few) for _ in range(n_rows)]
    return rng.sample(range(1, WIDE), n_rows)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number_values(rng, numbers, grouping, n_rows, share=None):
    """`share` of the rows (about half if None) at or next to a literal (so `==`, `>` and `<`
    all keep some), the rest distinct values spread around them."""
    as_float = any(isinstance(v, float) for v in numbers)
    low, high = min(numbers), max(numbers)
    spread = max(50, (high - low))
    step = 0.1 if as_float else 1  # `rating <= 8.2` against `<= 8.4`: values between them
    near = [round(v + d, 6) for v in numbers for d in (-step, 0, step)]
    if as_float:
        others = [round(rng.uniform(low - spread, high + spread), 2) for _ in range(n_rows)]
    else:
        candidates = range(int(low - spread), int(high + spread) + 1)
        others = rng.sample(candidates, min(n_rows, len(candidates)))
    values = []
    chosen = _literal_rows(rng, n_rows, share)
    for i in range(n_rows):
        if i in chosen or not others:
            values.append(rng.choice(near))
        else:
            values.append(rng.choice(others[:3]) if grouping else others.pop())
    return values


def synthesize_tables(schema: dict[str, list[str]], code, seed: int | str, n_rows: int = 10,
                      literal_share: float | None = None) -> dict:
    """Random tables for `schema` whose values include the literals `code` compares columns with.

    `code` is the reference, or a list of snippets (the reference first, then predictions): the
    literals of each are seeded, so a prediction's own filter keeps rows too. A column compared
    with strings holds strings (half of them those literals), one compared with numbers holds
    numbers at and around them (numbers as text if the code casts the column: `.astype(int)`).
    A column with no literal holds distinct values from a wide range, so that `idxmax` and
    `sort_values(...).iloc[0]`, `nlargest` and `head` agree (no ties); strings if the code calls
    `.str` on it. A column the code groups or counts by (`groupby`, `value_counts`, `nunique`,
    ...) holds a few repeated values instead, and a join key values shared across tables.
    `literal_share`: the share of rows that hold a literal (None: about half, by chance). Same
    seed, same tables.
    """
    rng = random.Random(seed)
    all_columns = [c for columns in schema.values() for c in columns]
    literals, kinds, grouping, joins = _column_facts(code, all_columns)
    # Join keys (`merge(on=...)`, or a column name two tables share) draw from one pool of
    # values per environment, so that rows of different tables meet.
    shared = {c for c in all_columns if all_columns.count(c) > 1} | joins
    key_pools = {c: rng.sample(range(1, WIDE), max(2, n_rows // 2)) for c in sorted(shared)}
    environment = {}
    for name, columns in schema.items():
        values_by_column = [
            [rng.choice(key_pools[column]) for _ in range(n_rows)]
            if column in key_pools and not literals.get(column) else
            _column_values(rng, column, literals.get(column, []), kinds.get(column),
                           column in grouping, _uses_string_methods(code, column), n_rows,
                           literal_share)
            for column in columns]
        environment[name] = {"columns": list(columns), "rows": [list(row) for row in zip(*values_by_column)]}
    return environment


def example_environments(context: str, code, known: dict | None = None, variants: int = 3,
                         seed: int = 0, n_rows: int = 10, predictions=()) -> list[dict]:
    """The table environments one example runs against: its known tables if every table its
    context declares is known, else `variants` synthesized ones, seeded with the literals of the
    reference `code` and of `predictions` (code for the same example). Empty if the context
    declares no table (then the reference cannot run, and the example is reported, not scored)."""
    schema = parse_context(context)
    if not schema:
        return []
    known = known or {}
    keys = [(name, tuple(columns)) for name, columns in schema.items()]
    if all(key in known for key in keys):
        return [{name: known[key] for name, key in zip(schema, keys)}]
    codes = [code, *(p for p in predictions if isinstance(p, str))]
    # Variant v has n_rows + v rows and its own share of rows holding a literal (from a third to
    # two thirds), so a row count or a count of matches is not the same on every table by chance.
    shares = [0.25 + 0.5 * (v + 0.5) / variants for v in range(variants)]
    return [synthesize_tables(schema, codes, seed=f"{seed}:{v}", n_rows=n_rows + v, literal_share=shares[v])
            for v in range(variants)]


def environment_kind(context: str, known: dict | None = None) -> str:
    """What `example_environments` gives this example: "known rows", "synthesized" or
    "no tables declared"."""
    schema = parse_context(context)
    if not schema:
        return "no tables declared"
    known = known or {}
    return "known rows" if all((n, tuple(c)) in known for n, c in schema.items()) else "synthesized"


# --- references that cannot tell answers apart --------------------------------------------------

def _is_empty(result: dict) -> bool:
    """A canonical result (`code_exec.canonical`) that found nothing: no rows, or a scalar
    None, NaN, 0 or False (what `count()`, `sum()` or `any()` give on an empty filter)."""
    if result.get("kind") == "scalar":
        value = result.get("value")
        return value is None or value == 0 or value is False
    return not result.get("rows")


def uninformative_reason(results: list[dict]) -> str | None:
    """Why a reference's results (one canonical result per table) cannot tell a right
    prediction from a wrong one, or None if they can: "empty" if it found nothing on every
    table (any code that finds nothing matches it), "constant" if it gave the same answer on
    every one of several different tables (code that ignores the data can match it)."""
    if not results:
        return None
    if all(_is_empty(r) for r in results):
        return "empty"
    if len(results) > 1 and all(r == results[0] for r in results[1:]):
        return "constant"
    return None


def uninformative_examples(gold_runs: list[list]) -> dict[int, str]:
    """{example index: reason} for the examples whose reference ran on every table (runs with
    `.status == "ok"` and a canonical `.value`, as `code_exec.ExecutionEvaluator.gold` holds
    them) but whose results are `uninformative_reason`. Those are reported and not scored."""
    found = {}
    for i, runs in enumerate(gold_runs):
        if runs and all(run.status == "ok" for run in runs):
            reason = uninformative_reason([run.value for run in runs])
            if reason:
                found[i] = reason
    return found


def without_examples(report, left_out):
    """The execution report of the examples not in `left_out` (indices), as the same class."""
    left_out = set(left_out)
    keep = [i for i in range(len(report.outcomes)) if i not in left_out]
    errors = report.errors or [""] * len(report.outcomes)
    return type(report)([report.outcomes[i] for i in keep], [errors[i] for i in keep])


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
