"""What a snippet's result is, whether a reply from the sandbox is well formed, and whether two
results are the same answer.

A result travels from the jailed child to the notebook as plain JSON values (`canonical`), never
pickle. The notebook trusts nothing in it: `validated_reply` accepts only the documented shape
(types, sizes, nesting depth) and turns anything else into that snippet's `runtime_error`. Only
the notebook decides `correct`, with `results_match`, which never raises: a huge integer, NaN,
mixed types or nested lists compare as "not equal" (or equal) but never stop the evaluation.
"""

from __future__ import annotations

import ast
import json
import math
import re

MAX_RESULT_BYTES = 4_000_000
MAX_ROWS = 200_000
MAX_COLUMNS = 10_000
MAX_CELLS = 1_000_000
MAX_DEPTH = 8  # a cell may be a list of cells, this deep
MAX_ERROR = 300
KINDS = ("scalar", "series", "frame", "list")
# What a child may report. `correct` / `wrong_result` are decided by the notebook, never claimed;
# `timeout` is observed by the worker.
CHILD_STATUSES = ("ok", "runtime_error", "memory_limit")


# --- canonical results: what a result is, as plain JSON values ---------------------------------
#
# Complete or nothing: every cell is kept whole (strings of any length, every item of a list, a
# dict's every key and value), and a result past the caps raises ResultTooLarge, which the child
# reports as `runtime_error: result too large`. A value with no known plain form raises
# UnknownValue: its repr may be cut or may hide what differs, so it is never compared.

class ResultTooLarge(ValueError):
    """A result past the size caps: reported as such, never compared by a prefix."""


class UnknownValue(TypeError):
    """A value of a kind that has no canonical form."""


class _Budget:
    """Cells and characters left before a result is too large to reply with."""

    def __init__(self):
        self.cells, self.chars = MAX_CELLS, MAX_RESULT_BYTES

    def spend(self, cells: int = 1, chars: int = 0) -> None:
        self.cells -= cells
        self.chars -= chars
        if self.cells < 0 or self.chars < 0:
            raise ResultTooLarge("result too large")


def _cell(value, budget: _Budget, depth: int = 0):
    import datetime
    import decimal

    import numpy as np
    import pandas as pd

    budget.spend()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) else value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        budget.spend(0, len(value))
        return value
    # Values whose str() is their whole value (dates, times, periods, intervals, decimals).
    if isinstance(value, (pd.Timestamp, pd.Timedelta, pd.Period, pd.Interval, datetime.date, datetime.time,
                          datetime.timedelta, decimal.Decimal, complex, np.dtype, pd.api.extensions.ExtensionDtype)):
        text = str(value)
        budget.spend(0, len(text))
        return text
    if isinstance(value, (dict, list, tuple, set, frozenset, range, np.ndarray, pd.Index, pd.Series,
                          pd.api.extensions.ExtensionArray)):
        if depth >= MAX_DEPTH - 1:
            raise ResultTooLarge(f"result too large: nested deeper than {MAX_DEPTH}")
        if isinstance(value, dict):  # a dict is its (key, value) pairs, in no particular order
            pairs = [[_cell(k, budget, depth + 2), _cell(v, budget, depth + 2)] for k, v in value.items()]
            return sorted(pairs, key=_sort_key)
        items = [_cell(v, budget, depth + 1) for v in (value.tolist() if hasattr(value, "tolist") else list(value))]
        return sorted(items, key=_sort_key) if isinstance(value, (set, frozenset)) else items
    if hasattr(value, "item") and callable(value.item) and isinstance(value, np.generic):
        return _cell(value.item(), budget, depth)
    raise UnknownValue(f"a result of type {type(value).__name__} has no comparable form")


def _named_index(index) -> bool:
    """A named index (groupby keys, value_counts) carries part of the answer; a plain row index
    (what filtering keeps) does not, so it is dropped."""
    return any(name is not None for name in index.names)


def _rows(frame, budget: _Budget) -> list:
    budget.spend(frame.shape[0] * frame.shape[1], 0)  # refused before a single row is built
    return [[_cell(v, budget) for v in row] for row in frame.itertuples(index=False, name=None)]


def canonical(value) -> dict:
    """A result as {"kind": scalar|series|frame|list, ...} of plain values, for comparison,
    complete (or ResultTooLarge / UnknownValue).

    Frames and Series become rows of cells; a named index becomes leading columns.
    """
    import numpy as np
    import pandas as pd

    budget = _Budget()
    if isinstance(value, pd.DataFrame):
        frame = value.reset_index() if _named_index(value.index) else value
        return {"kind": "frame", "columns": [str(c) for c in frame.columns], "rows": _rows(frame, budget)}
    if isinstance(value, pd.Series):
        if _named_index(value.index):
            frame = value.reset_index(name="\0value")
            return {"kind": "series", "columns": [str(c) for c in frame.columns], "rows": _rows(frame, budget)}
        return {"kind": "series", "columns": [str(value.name)], "rows": _rows(value.to_frame(), budget)}
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return {"kind": "list", "columns": None, "rows": _rows(pd.DataFrame(value), budget)}
    if isinstance(value, (pd.Index, np.ndarray, list, tuple, set, frozenset, range, pd.api.extensions.ExtensionArray)):
        items = list(value)
        rows = [[_cell(v, budget) for v in item] if isinstance(item, (list, tuple)) else [_cell(item, budget)]
                for item in items]
        return {"kind": "list", "columns": None,
                "rows": sorted(rows, key=_sort_key) if isinstance(value, (set, frozenset)) else rows}
    if isinstance(value, dict):
        return {"kind": "list", "columns": None,
                "rows": [[_cell(k, budget), _cell(v, budget)] for k, v in value.items()]}
    return {"kind": "scalar", "value": _cell(value, budget)}


# --- the reply schema --------------------------------------------------------------------------

class BadReply(ValueError):
    """A reply that is not of the documented shape."""


def _check_cell(cell, depth: int, budget: list) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise BadReply("too many cells")
    if cell is None or isinstance(cell, (bool, int, float)):
        return
    if isinstance(cell, str):
        return  # of any length: the reply's size is capped as a whole
    if isinstance(cell, list):
        if depth >= MAX_DEPTH:
            raise BadReply("nested too deep")
        for item in cell:
            _check_cell(item, depth + 1, budget)
        return
    raise BadReply(f"a cell of type {type(cell).__name__}")


def check_value(value) -> None:
    """Raise BadReply unless `value` is a canonical result."""
    if not isinstance(value, dict) or value.get("kind") not in KINDS:
        raise BadReply("not a result")
    budget = [MAX_CELLS]
    if value["kind"] == "scalar":
        if set(value) != {"kind", "value"}:
            raise BadReply("scalar keys")
        _check_cell(value["value"], 1, budget)
        return
    if set(value) != {"kind", "columns", "rows"}:
        raise BadReply("table keys")
    columns, rows = value["columns"], value["rows"]
    if columns is not None and not (isinstance(columns, list) and len(columns) <= MAX_COLUMNS
                                    and all(isinstance(c, str) for c in columns)):
        raise BadReply("columns")
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise BadReply("rows")
    for row in rows:
        if not isinstance(row, list):
            raise BadReply("a row that is not a list")
        _check_cell(row, 0, budget)


def validated_reply(reply, statuses=CHILD_STATUSES) -> dict:
    """`reply` if it is {"status": one of `statuses`, "value": a canonical result (when ok),
    "error": a short string}; otherwise a `runtime_error` saying what was wrong. Never raises."""
    try:
        if not isinstance(reply, dict) or not set(reply) <= {"status", "value", "error"}:
            raise BadReply("not a reply")
        status, error = reply.get("status"), reply.get("error", "")
        if not isinstance(status, str) or status not in statuses:
            raise BadReply("unknown status")
        if not isinstance(error, str):
            raise BadReply("error is not text")
        if status == "ok":
            check_value(reply.get("value"))
            return {"status": "ok", "value": reply["value"], "error": ""}
        if "value" in reply:
            raise BadReply("a value with a failure")
        return {"status": status, "error": error[:MAX_ERROR]}
    except BadReply as err:
        return {"status": "runtime_error", "error": f"malformed reply from the sandbox: {err}"}
    except Exception as err:  # noqa: BLE001 - RecursionError, MemoryError on hostile input
        return {"status": "runtime_error", "error": f"malformed reply from the sandbox: {type(err).__name__}"}


def parse_reply(data: bytes, statuses=CHILD_STATUSES) -> dict:
    """Bytes from a child, size-capped, as a validated reply; never raises."""
    if len(data) > MAX_RESULT_BYTES:
        return {"status": "runtime_error", "error": "result too large"}
    try:
        reply = json.loads(data)
    except Exception:  # noqa: BLE001 - bad JSON, bad UTF-8, too deep, too many digits
        return {"status": "runtime_error", "error": "the snippet ended without a readable result"}
    return validated_reply(reply, statuses)


# --- comparing results ----------------------------------------------------------------------------

def _number(value) -> bool:
    return isinstance(value, (int, float))  # bools count as 0/1, as pandas sums them


def _cells_equal(a, b, rel_tol: float = 1e-6) -> bool:
    if _number(a) and _number(b):
        if isinstance(a, int) and isinstance(b, int):
            return a == b  # exact, whatever the size
        try:
            x, y = float(a), float(b)
        except OverflowError:  # an int beyond float range equals no float
            return False
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_cells_equal(x, y, rel_tol) for x, y in zip(a, b))
    if type(a) is not type(b) and not (a is None or b is None):
        return False  # "1998" is not 1998
    return a == b


def _sort_key(row) -> str:
    def norm(v):
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, (int, float)):
            try:
                v = float(v)
            except OverflowError:
                return "\0big"
            return "\0nan" if math.isnan(v) else round(v, 6)
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v
    try:
        return json.dumps([norm(v) for v in row], default=str)
    except (ValueError, TypeError, RecursionError):
        return repr(row)[:1000]


def is_order_sensitive(reference: str) -> bool:
    """Rows are compared in order only when the reference orders them (as ORDER BY in Spider)."""
    return bool(re.search(r"sort_values|sort_index|nlargest|nsmallest|\bsorted\(|\.rank\(", reference))


def _string_list(node) -> bool:
    return isinstance(node, ast.List) and len(node.elts) >= 2 and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)


def column_order_fixed(reference: str) -> bool:
    """Columns are compared in order only when the reference spells the order out: it selects
    columns with an explicit list (`df[['name', 'age']]`, `df.loc[mask, ['name', 'age']]`,
    `.reindex(columns=[...])`, `.filter(items=[...])`), as a question "name and age of ..." is
    written. Otherwise (whole rows, `groupby().agg({...})`, `merge`) frames match by column set,
    since nothing in the question orders those columns."""
    try:
        tree = ast.parse(reference)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            index = node.slice
            if _string_list(index) or (isinstance(index, ast.Tuple) and len(index.elts) == 2
                                       and _string_list(index.elts[1])):
                return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("reindex", "filter"):
            if any(k.arg in ("columns", "items") and _string_list(k.value) for k in node.keywords):
                return True
    return False


def _aligned_by_name(predicted: dict, gold: dict):
    """The predicted rows with their columns in the gold order, or None if the names differ as
    sets (or repeat, when no order by name exists)."""
    p_cols, g_cols = predicted["columns"], gold["columns"]
    if p_cols == g_cols:
        return predicted["rows"]
    if len(set(p_cols)) != len(p_cols) or len(set(g_cols)) != len(g_cols) or set(p_cols) != set(g_cols):
        return None
    order = [p_cols.index(name) for name in g_cols]
    return [[row[i] for i in order] if len(row) == len(order) else row for row in predicted["rows"]]


def _results_match(predicted: dict, gold: dict, ordered: bool, ordered_columns: bool) -> bool:
    if gold["kind"] == "scalar" or predicted["kind"] == "scalar":
        def only_cell(result):
            if result["kind"] == "scalar":
                return True, result["value"]
            rows = result["rows"]
            return (len(rows) == 1 and len(rows[0]) == 1), (rows[0][0] if rows and rows[0] else None)
        ok_p, p = only_cell(predicted)
        ok_g, g = only_cell(gold)
        return ok_p and ok_g and _cells_equal(p, g)
    rows_p, rows_g = predicted["rows"], gold["rows"]
    if len(rows_p) != len(rows_g):
        return False
    if predicted["kind"] == gold["kind"] == "frame":
        if ordered_columns:
            if predicted["columns"] != gold["columns"]:
                return False
        else:
            rows_p = _aligned_by_name(predicted, gold)
            if rows_p is None:
                return False
    if not ordered:
        rows_p, rows_g = sorted(rows_p, key=_sort_key), sorted(rows_g, key=_sort_key)
    return all(_cells_equal(p, g) for p, g in zip(rows_p, rows_g))


def results_match(predicted: dict, gold: dict, ordered: bool = False, ordered_columns: bool = False) -> bool:
    """Whether two canonical results are the same answer; never raises.

    Values are compared with a relative tolerance of 1e-6 (integers exactly); the row index is
    ignored unless named; row order counts only if `ordered`; column names count only when both
    results are frames (`rename` answers), and their order only if `ordered_columns`; so a Series
    and a one-column frame with the same values match, as do a one-cell result and a scalar.
    Anything malformed is "not the same".
    """
    try:
        check_value(predicted)
        check_value(gold)
        return bool(_results_match(predicted, gold, ordered, ordered_columns))
    except Exception:  # noqa: BLE001 - a comparison must never stop the evaluation
        return False
