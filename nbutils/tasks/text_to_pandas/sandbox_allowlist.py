"""The sandbox's first layer: an allowlist of the Python that pandas answers need.

A denylist names what is dangerous and misses what nobody thought of (a method name built at run
time that reaches `DataFrame.eval`, a `match` class pattern that looks an attribute up by a plain
string, a `str.format` field that walks into globals). This check names what is allowed instead:

- statements: expressions, assignments to plain names (and to a table's columns, `df['c'] = ...`,
  `df.columns = [...]`), `for` / `while` / `if` with those inside. No `def`, `class`, `import`,
  `try`, `with`, `match`, `global`, `del`, `raise`, `assert`, `async`, `yield`.
- names: the tables, `pd`, `np`, a few harmless builtins, and the snippet's own variables; never a
  name with a leading underscore.
- attributes: only those in `ALLOWED_ATTRIBUTES`, the computing methods of DataFrame, Series,
  GroupBy, Index and the `.str` / `.dt` / `.cat` accessors, plus the functions of `pd` and `np` an
  answer uses. Nothing that reads or writes files (`to_csv`, `read_*`), evaluates text (`eval`,
  `query`) or changes global state (`set_option`).
- functions given by name: methods that look a function up by a string (`agg`, `apply`,
  `transform`, `pivot_table(aggfunc=...)`, ...) get only a lambda, a builtin or `np`/`pd` function,
  or a constant string from `REDUCTIONS`, so no name computed at run time reaches them.
- `query` / `eval` only with a constant expression that passes the same allowlist (no `@name`,
  no dunders), since pandas' expression language reaches attributes and local variables.
- `str.format` only on a constant template whose fields are plain (`{}`, `{0}`, `{name}`, with a
  plain format spec): no `{0.attr}`, no `{0[key]}`.

Every reference of the sample data passes (tests/tasks/test_sandbox_fuzz.py checks it); the notebook
reports how many references of a data set this check refuses, and why (`refusals`).
"""

from __future__ import annotations

import ast
import string
from collections import Counter

SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "format",
    "frozenset", "int", "isinstance", "len", "list", "map", "max", "min", "pow", "print", "range",
    "repr", "reversed", "round", "set", "slice", "sorted", "str", "sum", "tuple", "zip", "True",
    "False", "None", "ArithmeticError", "Exception", "IndexError", "KeyError", "TypeError",
    "ValueError", "ZeroDivisionError",
)
MODULES = ("pd", "np")
RESULT_NAME = "result"

# Statement and expression node types a pandas answer needs. Anything else is refused.
ALLOWED_NODES = frozenset({
    # statements
    ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.While, ast.If,
    ast.Break, ast.Continue, ast.Pass,
    # expressions
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Lambda, ast.IfExp, ast.Dict, ast.Set, ast.ListComp,
    ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Compare, ast.Call, ast.Constant,
    ast.Attribute, ast.Subscript, ast.Starred, ast.Name, ast.List, ast.Tuple, ast.Slice,
    ast.JoinedStr, ast.FormattedValue, ast.NamedExpr,
    # parts
    ast.keyword, ast.comprehension, ast.arguments, ast.arg, ast.Load, ast.Store,
    ast.And, ast.Or, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.LShift, ast.RShift, ast.BitOr, ast.BitXor, ast.BitAnd, ast.MatMult, ast.Invert, ast.Not,
    ast.UAdd, ast.USub, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot,
    ast.In, ast.NotIn,
})

_FRAME_AND_SERIES = """
    abs add add_prefix add_suffix agg aggregate align all any append apply applymap argmax argmin
    argsort astype at at_time between between_time bfill bool clip combine combine_first compare
    convert_dtypes copy corr corrwith count cov cummax cummin cumprod cumsum describe diff div
    divide dot drop drop_duplicates droplevel dropna dtypes duplicated empty eq equals explode
    ffill fillna filter first first_valid_index floordiv ge get groupby gt head iat idxmax
    idxmin iloc infer_objects info insert interpolate isin isna isnull item items iterrows
    itertuples join keys kurt kurtosis last last_valid_index le loc lt map mask max mean median
    melt memory_usage merge min mod mode mul multiply ne nlargest notna notnull nsmallest nunique
    pct_change pivot pivot_table pop pow prod product quantile radd rank rdiv reindex rename
    rename_axis reorder_levels repeat replace reset_index rfloordiv rmod rmul round rpow rsub
    rtruediv sample searchsorted sem set_axis set_index shift size skew sort_index sort_values
    squeeze stack std sub subtract sum swaplevel tail take to_dict to_frame to_list to_numpy
    to_string tolist transform transpose truediv truncate tz_convert tz_localize unique unstack
    update value_counts values var where xs assign nth ngroup ngroups groups get_group cumcount
    ohlc rolling expanding resample ewm shape ndim name names columns index dtype T array hasnans
    is_unique is_monotonic_increasing is_monotonic_decreasing axes attrs str dt cat plot_never
    case_when pipe
"""
_INDEX = """
    difference intersection union symmetric_difference get_level_values set_names to_series
    nlevels levels codes is_integer is_numeric is_object get_loc levshape
"""
_STR = """
    capitalize casefold cat center contains count decode encode endswith extract extractall find
    findall fullmatch get get_dummies index isalnum isalpha isdecimal isdigit islower isnumeric
    isspace istitle isupper join len ljust lower lstrip match normalize pad partition removeprefix
    removesuffix repeat replace rfind rindex rjust rpartition rsplit rstrip slice slice_replace
    split startswith strip swapcase title translate upper wrap zfill
"""
_DT = """
    date day day_name day_of_week day_of_year dayofweek dayofyear days days_in_month daysinmonth
    floor ceil hour is_leap_year is_month_end is_month_start is_quarter_end is_quarter_start
    is_year_end is_year_start isocalendar microsecond minute month month_name nanosecond
    normalize quarter second seconds strftime time to_period to_pydatetime total_seconds tz week
    weekday weekofyear year components microseconds nanoseconds categories codes ordered
    as_ordered as_unordered add_categories remove_categories rename_categories
    set_categories reorder_categories
"""
_PLAIN_PYTHON = """
    append extend insert remove pop sort reverse keys values items get setdefault update copy
    count index add discard union intersection difference issubset issuperset split rsplit join
    strip lstrip rstrip lower upper title capitalize startswith endswith replace find zfill
    isdigit isalpha real imag conjugate bit_length is_integer as_integer_ratio
"""
_PANDAS_FUNCTIONS = """
    DataFrame Series Index MultiIndex Categorical Timestamp Timedelta NaT NA NamedAgg Grouper
    concat merge merge_asof crosstab pivot_table pivot melt cut qcut get_dummies isna isnull notna
    notnull to_datetime to_numeric to_timedelta date_range period_range timedelta_range unique
    value_counts factorize wide_to_long DateOffset Interval IntervalIndex CategoricalDtype
    DatetimeIndex RangeIndex
"""
_NUMPY_FUNCTIONS = """
    nan inf pi e newaxis where select mean average median sum prod nansum nanmean nanmedian nanmax
    nanmin nanstd max min maximum minimum amax amin abs absolute round around floor ceil trunc
    rint sqrt square log log2 log10 log1p exp expm1 power sign std var cumsum cumprod diff argmax
    argmin argsort sort unique isin isnan isfinite isinf count_nonzero percentile quantile clip
    array asarray arange linspace zeros ones full zeros_like ones_like full_like concatenate
    vstack hstack stack column_stack logical_and logical_or logical_not logical_xor all any
    histogram bincount digitize corrcoef cov dot sin cos tan arcsin arccos arctan arctan2
    degrees radians hypot mod fmod remainder floor_divide true_divide divide multiply add
    subtract int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 bool_
    str_ object_ datetime64 timedelta64 nonzero flatnonzero searchsorted intersect1d union1d
    setdiff1d in1d cross outer inner tile repeat ravel reshape transpose squeeze size shape ndim
    flatten item astype tolist nanargmax nanargmin ptp
"""
ALLOWED_ATTRIBUTES = frozenset(
    " ".join([_FRAME_AND_SERIES, _INDEX, _STR, _DT, _PLAIN_PYTHON, _PANDAS_FUNCTIONS,
              _NUMPY_FUNCTIONS]).split()) - {"plot_never"}

# Functions a string may name where pandas looks a function up by its name.
REDUCTIONS = frozenset("""
    sum mean median min max count size nunique std var sem first last prod product any all
    idxmax idxmin mode unique cumsum cumprod cummax cummin rank abs round skew kurt quantile
    describe value_counts nth ohlc pct_change diff shift fillna bfill ffill head tail list len
    cumcount ngroup
""".split())
# Methods that take a function, possibly by its name as a string, and where its argument goes.
# (pandas 3 checked: `Series.map`, `DataFrame.map`, `pipe` and `combine` call what they are
# given and refuse a string; these look a string up as a method name.)
STRING_DISPATCH = frozenset({"agg", "aggregate", "transform", "apply", "pivot_table", "crosstab"})
FUNCTION_KEYWORDS = frozenset({"func", "arg", "aggfunc"})
# Methods that write to a path given as `buf` (`df.to_string('/path')`): called directly, with no
# path, never passed on (`df.pipe(pd.DataFrame.to_string, path)` would dodge that check).
BUFFER_METHODS = frozenset({"to_string", "info"})
# Keywords that name a file or a buffer to write to.
PATH_KEYWORDS = frozenset({"buf", "path", "path_or_buf", "filepath_or_buffer", "file", "fname"})
# Words that a dispatching method takes as a plain option (`axis='columns'`).
OPTION_WORDS = frozenset({"index", "columns", "rows", "expand", "reduce", "broadcast", "ignore",
                          "compat", "all"})
# Builtin types and functions a dispatching method may be given (`df.apply(len)`).
FUNCTION_BUILTINS = frozenset({"abs", "all", "any", "bool", "float", "int", "len", "list", "max",
                               "min", "round", "set", "sorted", "str", "sum", "tuple"})
TYPE_ROOTS = frozenset({"pd", "np", "str", "int", "float", "list", "dict", "set", "tuple"})


class ForbiddenCode(ValueError):
    """The code uses a construct the sandbox does not allow. `kind` names the rule (for the
    notebook's count of refused references), the message names the construct."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


def _bound_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _lambda_names(tree: ast.AST) -> frozenset:
    """Variables only ever bound by `name = lambda ...`: they hold functions, never strings."""
    stores, lambdas = Counter(), Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stores[node.id] += 1
        elif isinstance(node, ast.arg):
            stores[node.arg] += 1
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda) \
                and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            lambdas[node.targets[0].id] += 1
    return frozenset(name for name, n in lambdas.items() if stores[name] == n)


def _is_function_form(node: ast.AST, functions: frozenset = frozenset()) -> bool:
    """A function given to a dispatching method: a lambda, a builtin, `np.mean` / `pd.Series.sum` /
    `str.upper` (an attribute chain rooted at a module or builtin type), or a reduction's name."""
    if isinstance(node, ast.Lambda):
        return True
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in REDUCTIONS
    if isinstance(node, ast.Name):
        return node.id in FUNCTION_BUILTINS or node.id in functions
    if isinstance(node, ast.Attribute):
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        return isinstance(root, ast.Name) and root.id in TYPE_ROOTS
    return False


def _is_functions(node: ast.AST, functions: frozenset = frozenset()) -> bool:
    """One function, a list of them, or {column: function(s)}."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(_is_function_form(item, functions) for item in node.elts)
    if isinstance(node, ast.Dict):
        return None not in node.keys and all(
            isinstance(key, ast.Constant) for key in node.keys) and all(
            _is_function_form(value, functions) or (isinstance(value, (ast.List, ast.Tuple))
                                                    and all(_is_function_form(v, functions) for v in value.elts))
            for value in node.values)
    return _is_function_form(node, functions)


def _is_option(node: ast.AST) -> bool:
    """A plain argument of a dispatching method: no string, except an option word."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value not in OPTION_WORDS:
            return False
    return True


def _check_dispatch(call: ast.Call, functions: frozenset) -> None:
    method = call.func.attr
    where = f"{method}(...)"
    if any(isinstance(arg, ast.Starred) for arg in call.args) or any(k.arg is None for k in call.keywords):
        raise ForbiddenCode("function by name", f"{where} with *args or **kwargs is not allowed")
    positional = list(call.args)
    # pivot_table / crosstab take the data first and the function only by keyword.
    function_args = [] if method in ("pivot_table", "crosstab") else positional[:1]
    for arg in function_args:
        if not _is_functions(arg, functions):
            raise ForbiddenCode("function by name", f"{where}: the function must be a lambda, a "
                                "builtin, an np/pd function or one of the reductions by name")
    for arg in positional:
        if arg not in function_args and not _is_option(arg):
            raise ForbiddenCode("function by name", f"{where}: a string argument that is not a function")
    for keyword in call.keywords:
        value = keyword.value
        if keyword.arg in FUNCTION_KEYWORDS:
            ok = _is_functions(value, functions)
        elif method in ("agg", "aggregate") and isinstance(value, ast.Tuple) and len(value.elts) == 2:
            ok = isinstance(value.elts[0], ast.Constant) and _is_function_form(value.elts[1], functions)  # name=(col, func)
        elif method in ("agg", "aggregate") and isinstance(value, ast.Call):  # name=pd.NamedAgg(col, func)
            ok = (isinstance(value.func, ast.Attribute) and value.func.attr == "NamedAgg"
                  and all(isinstance(a, ast.Constant) for a in value.args[:1])
                  and all(_is_function_form(a) for a in value.args[1:])
                  and all(_is_function_form(k.value) if k.arg == "aggfunc" else isinstance(k.value, ast.Constant)
                          for k in value.keywords))
        elif method in ("pivot_table", "crosstab"):
            ok = True  # index=, columns=, values= name columns; the function is aggfunc=
        else:
            ok = _is_option(value)
        if not ok:
            raise ForbiddenCode("function by name", f"{where}: argument {keyword.arg}= is not allowed there")


def _check_format(call: ast.Call) -> None:
    """`'{} {:.2f}'.format(a, b)`: a constant template with plain fields only."""
    template = call.func.value
    if not (isinstance(template, ast.Constant) and isinstance(template.value, str)):
        raise ForbiddenCode("format", "format() only on a constant template")
    try:
        parsed = list(string.Formatter().parse(template.value))
    except ValueError as err:
        raise ForbiddenCode("format", f"bad format template: {err}") from None
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if not (field == "" or field.isdigit() or (field.isidentifier() and not field.startswith("_"))):
            raise ForbiddenCode("format", f"format field {{{field}}} reads attributes or items")
        if spec and ("{" in spec or "}" in spec):
            raise ForbiddenCode("format", "nested format fields are not allowed")


EXPRESSION_METHODS = frozenset({"query", "eval"})
EXPRESSION_KEYWORDS = frozenset({"expr", "engine", "parser", "inplace"})


def _check_expression_call(call: ast.Call, table_names) -> None:
    """`df.query('points > 10')`, `df.eval('a + b')`, `pd.eval(...)`: pandas' expression language
    reaches attributes, dunders and local variables (`@name`), so only a constant expression
    that passes this same allowlist (its names are columns) is accepted."""
    where = f"{call.func.attr}(...)"
    expressions = [a for a in call.args[:1]] + [k.value for k in call.keywords if k.arg == "expr"]
    if len(call.args) > 1 or len(expressions) != 1 or any(
            k.arg not in EXPRESSION_KEYWORDS for k in call.keywords):
        raise ForbiddenCode("expression string", f"{where} takes one constant expression")
    text = expressions[0]
    if not (isinstance(text, ast.Constant) and isinstance(text.value, str)):
        raise ForbiddenCode("expression string", f"{where}: the expression must be a constant string")
    if "@" in text.value or "__" in text.value:
        raise ForbiddenCode("expression string", f"{where}: no @variables and no dunders")
    import re

    # `a column` in backticks becomes a plain name for the check.
    plain = re.sub(r"`[^`]*`", "quoted_column", text.value)
    try:
        tree = ast.parse(plain, mode="exec")
    except SyntaxError:
        raise ForbiddenCode("expression string", f"{where}: the expression does not parse as Python") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr not in ALLOWED_ATTRIBUTES:
            raise ForbiddenCode("expression string", f"{where}: attribute {node.attr!r} is not in the allowlist")
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Attribute):
            raise ForbiddenCode("expression string", f"{where}: only methods may be called")
        if type(node) not in ALLOWED_NODES or isinstance(node, (ast.Lambda, ast.NamedExpr, ast.For,
                                                                   ast.While, ast.If)):
            raise ForbiddenCode("expression string", f"{where}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise ForbiddenCode("expression string", f"{where}: name {node.id!r} is not allowed")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in STRING_DISPATCH | EXPRESSION_METHODS | BUFFER_METHODS | {"format"}:
            raise ForbiddenCode("expression string", f"{where}: {node.func.attr}() inside an expression")


def _check_assignment_target(target: ast.AST, tables: set[str]) -> None:
    if isinstance(target, ast.Name):
        return
    if isinstance(target, (ast.Tuple, ast.List)):
        for item in target.elts:
            _check_assignment_target(item, tables)
        return
    if isinstance(target, ast.Starred):
        _check_assignment_target(target.value, tables)
        return
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
        return  # df['new'] = ..., counts[k] = ...
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute) \
            and isinstance(target.value.value, ast.Name) and target.value.attr in ("loc", "iloc", "at", "iat"):
        return  # df.loc[mask, 'c'] = ...
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
            and target.value.id not in MODULES and target.attr in ("columns", "index", "name"):
        return  # df.columns = [...]
    raise ForbiddenCode("assignment", "only plain names, columns of a frame and df.columns/index may be assigned")


def _column_attributes(tables) -> frozenset:
    """Columns reachable as attributes (`df.points`): identifiers without a leading underscore
    that are not also an attribute of DataFrame or Series (there pandas returns its own)."""
    if not isinstance(tables, dict):
        return frozenset()
    import pandas as pd

    names = set()
    for spec in tables.values():
        columns = spec.get("columns", []) if isinstance(spec, dict) else []
        for column in columns:
            if isinstance(column, str) and column.isidentifier() and not column.startswith("_") \
                    and not hasattr(pd.DataFrame, column) and not hasattr(pd.Series, column):
                names.add(column)
    return frozenset(names)


def check_code(code: str, table_names=()) -> ast.Module:
    """Parse `code` and refuse anything outside the allowlist (raises SyntaxError or
    ForbiddenCode); returns the tree. `table_names`: the names of the tables, or the tables
    themselves ({name: {"columns": [...], ...}}), whose columns may then be read as attributes."""
    tree = ast.parse(code, mode="exec")
    tables = set(table_names)
    columns = _column_attributes(table_names)
    known = tables | set(MODULES) | set(SAFE_BUILTINS) | _bound_names(tree)
    functions = _lambda_names(tree)
    for node in ast.walk(tree):
        kind = type(node)
        if kind not in ALLOWED_NODES:
            raise ForbiddenCode(f"syntax: {kind.__name__}", f"{kind.__name__} is not allowed")
        if kind is ast.Name:
            if node.id.startswith("_"):
                raise ForbiddenCode("underscore name", f"name {node.id!r} is not allowed")
            if isinstance(node.ctx, ast.Load) and node.id not in known:
                raise ForbiddenCode("unknown name", f"name {node.id!r} is not a table, pd, np, a "
                                    "harmless builtin or a variable of the code")
        elif kind is ast.arg and node.arg.startswith("_"):
            raise ForbiddenCode("underscore name", f"name {node.arg!r} is not allowed")
        elif kind is ast.Attribute:
            if node.attr not in ALLOWED_ATTRIBUTES | EXPRESSION_METHODS and node.attr != "format" \
                    and node.attr not in columns:
                raise ForbiddenCode("attribute", f"attribute {node.attr!r} is not in the allowlist")
            if isinstance(node.ctx, ast.Store):
                pass  # checked with the assignment
        elif kind is ast.keyword and node.arg in PATH_KEYWORDS:
            raise ForbiddenCode("file argument", f"{node.arg}= (a file to write) is not allowed")
        elif kind is ast.Call and isinstance(node.func, ast.Attribute):
            if node.func.attr == "to_string" and node.args:
                raise ForbiddenCode("file argument", "to_string() takes a file as its first argument")
            if node.func.attr in STRING_DISPATCH:
                _check_dispatch(node, functions)
            elif node.func.attr in EXPRESSION_METHODS:
                _check_expression_call(node, table_names)
            elif node.func.attr == "format":
                _check_format(node)
        elif kind in (ast.Assign, ast.AugAssign, ast.AnnAssign):
            for target in (node.targets if kind is ast.Assign else [node.target]):
                _check_assignment_target(target, tables)
        elif kind is ast.FormattedValue and node.format_spec is not None:
            pass  # an f-string's spec is itself parsed code, checked like the rest
    # A dispatching method or `format` anywhere but as the called function of a checked call
    # (`f = df.agg; f(name)`, `df.pipe(pd.DataFrame.agg, name)`) would dodge the checks above.
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in (STRING_DISPATCH | BUFFER_METHODS | EXPRESSION_METHODS
                                                             | {"format"}) and id(node) not in called:
            raise ForbiddenCode("function by name", f"{node.attr} may only be called, not passed on")
    return tree


def refusal(code: str, table_names=()) -> str | None:
    """Why the check refuses `code` (its rule), or None if it passes; a syntax error is
    `syntax_error`."""
    try:
        check_code(code, table_names)
    except ForbiddenCode as err:
        return err.kind
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "syntax_error"
    return None


def refusals(codes, table_names_per_code) -> dict:
    """How many of `codes` the check refuses and why: {"checked", "refused", "by_rule": {rule: n},
    "examples": {rule: first detail}, "not_parsing"} (for the notebook's report on the
    references). Code that does not parse is counted apart: no allowlist could accept it."""
    by_rule, examples, checked, not_parsing = Counter(), {}, 0, 0
    for code, names in zip(codes, table_names_per_code):
        checked += 1
        try:
            check_code(code, names)
        except ForbiddenCode as err:
            by_rule[err.kind] += 1
            examples.setdefault(err.kind, str(err)[:200])
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            not_parsing += 1
    return {"checked": checked, "refused": sum(by_rule.values()), "by_rule": dict(by_rule.most_common()),
            "examples": examples, "not_parsing": not_parsing}
