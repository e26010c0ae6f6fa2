"""The sandbox's first layer: an allowlist of the Python that pandas answers need.

A denylist names what is dangerous and misses what nobody thought of (a method name built at run
time that reaches `DataFrame.eval`, a `match` class pattern that looks an attribute up by a plain
string, a `str.format` field that walks into globals). This check names what is allowed instead:

- size: at most `MAX_CODE_CHARS` characters, refused before parsing (so the check's time and
  memory are bounded; the check is linear in the code's size and runs in the jailed child).
- statements: expressions, assignments to plain names (and to a table's columns, `df['c'] = ...`,
  `df.c = ...` for an existing column, `df.columns = [...]`), `for` / `while` / `if` with those
  inside, and a `def` whose body is one `return <expression>` (a lambda with a name). No
  `class`, `import`, `try`, `with`, `match`, `global`, `del`, `raise`, `assert`, `async`, `yield`.
- names: never one with a leading underscore. Any other name is left to Python: the namespace
  holds only the tables, `pd`, `np`, a few harmless builtins and the snippet's own variables, so
  an unknown name is the snippet's `NameError` at run time, not a refusal.
- attributes: never one with a leading underscore; otherwise only those in `ALLOWED_ATTRIBUTES`,
  the computing methods of DataFrame, Series, GroupBy, Index and the `.str` / `.dt` / `.cat`
  accessors, plus the functions of `pd` and `np` an answer uses, and the tables' columns. Nothing
  that reads or writes files (`to_csv`, `read_*`), evaluates text (`eval`, `query`, except as
  below) or changes global state (`set_option`).
- functions given by name: methods that look a function up by a string (`agg`, `apply`,
  `transform`, `pivot_table(aggfunc=...)`, ...) get only a lambda, a builtin or `np`/`pd` function,
  or a constant string from `REDUCTIONS`, so no name computed at run time reaches them.
- `query` / `eval` / `pd.eval` only with a constant expression in a small grammar that pandas and
  this check cannot read differently (`EXPRESSION_NODES`: names, literals, comparisons, arithmetic,
  `and` / `or` / `not`, `in`): pandas' expression language reaches attributes and variables, and
  it splits and tokenizes its text by its own rules (see `_check_expression_text`).
- `str.format` only on a constant template whose fields are plain (`{}`, `{0}`, `{name}`, with a
  plain format spec): no `{0.attr}`, no `{0[key]}`.

Every reference of the sample data passes (tests/tasks/test_sandbox_fuzz.py checks it); the notebook
reports how many references of a data set this check refuses, and why (`refusals`).
"""

from __future__ import annotations

import ast
import re
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
# Generated answers are one to a few lines (the sample data's longest reference is a few hundred
# characters, PandasEval's longest human answer 207): 16 kB is far above any honest answer and
# bounds what the check parses.
MAX_CODE_CHARS = 16_000

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
    # a one-expression `def` (its shape is checked by _check_def)
    ast.FunctionDef, ast.Return,
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
    case_when pipe select_dtypes
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


def _function_names(tree: ast.AST) -> frozenset:
    """Variables only ever bound by `name = lambda ...` or a `def`: they hold functions, never
    strings."""
    stores, functions = Counter(), Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stores[node.id] += 1
        elif isinstance(node, ast.arg):
            stores[node.arg] += 1
        elif isinstance(node, ast.FunctionDef):
            stores[node.name] += 1
            functions[node.name] += 1
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda) \
                and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            functions[node.targets[0].id] += 1
    return frozenset(name for name, n in functions.items() if stores[name] == n)


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


def _stringy_nodes(nodes: list) -> set:
    """ids of the nodes whose subtree holds a string other than an option word: one pass, children
    before parents (`nodes` is ast.walk's breadth-first order), so the check stays linear however
    deeply dispatching calls nest."""
    stringy = set()
    for node in reversed(nodes):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value not in OPTION_WORDS) \
                or any(id(child) in stringy for child in ast.iter_child_nodes(node)):
            stringy.add(id(node))
    return stringy


def _check_dispatch(call: ast.Call, functions: frozenset, stringy: set) -> None:
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
        if arg not in function_args and id(arg) in stringy:
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
            ok = id(value) not in stringy
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
# The whole grammar accepted inside an expression string: names (columns), literals, comparisons,
# arithmetic, `and` / `or` / `not`, `in`, lists and tuples of those, and `name = expression`
# (df.eval's new column). No attribute, call, subscript or lambda: nothing that reaches an object.
EXPRESSION_NODES = frozenset({
    ast.Module, ast.Expr, ast.Assign, ast.Name, ast.Load, ast.Store, ast.Constant, ast.BoolOp, ast.And,
    ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Invert, ast.BinOp, ast.Add, ast.Sub,
    ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr, ast.BitXor,
    ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.List,
    ast.Tuple,
})
BACKTICK_NAME = "backtick_quoted_column"


def _check_expression_text(text: str, columns: frozenset, where: str) -> None:
    """Accept `text` only if pandas and Python's parser read the same program from it.

    pandas splits an expression into lines with `str.splitlines()` (which also ends a line at
    \\x0b, \\x0c, \\x1c-\\x1e, \\x85, \\u2028, \\u2029 and \\r) and reads backticks inside string
    literals as plain characters; Python's parser does neither. So: only printable characters,
    spaces, tabs and \\n; no backslash (no escapes: a dunder written as \\x5f), no `#`, no `@`;
    a backtick pair may only quote a column of the tables, with no quote inside it, so that
    replacing it by a plain name moves no string literal's bounds; and what is left must parse into
    `EXPRESSION_NODES`, with no name that starts with an underscore."""
    for char in text:
        if not (char.isprintable() or char in "\n\t") or char in "\\#@":
            raise ForbiddenCode("expression string", f"{where}: character {char!r} is not allowed in an expression")

    def column(match):
        name = match.group(1)
        if name not in columns or any(q in name for q in "'\"`"):
            raise ForbiddenCode("expression string", f"{where}: backticks may only quote a column of the tables, "
                                f"not {name[:40]!r}")
        return BACKTICK_NAME

    plain = re.sub(r"`([^`]*)`", column, text)
    if "`" in plain:
        raise ForbiddenCode("expression string", f"{where}: an unpaired backtick")
    try:
        tree = ast.parse(plain, mode="exec")
    except (SyntaxError, ValueError):
        raise ForbiddenCode("expression string", f"{where}: the expression does not parse") from None
    for node in ast.walk(tree):
        if type(node) not in EXPRESSION_NODES:
            raise ForbiddenCode("expression string", f"{where}: {type(node).__name__} is not allowed in an expression")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise ForbiddenCode("expression string", f"{where}: name {node.id!r} is not allowed")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (str, int, float, type(None))):
            raise ForbiddenCode("expression string", f"{where}: a {type(node.value).__name__} literal is not allowed")
        if isinstance(node, ast.Assign) and not (len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ForbiddenCode("expression string", f"{where}: only `name = expression` may assign")


def _check_expression_call(call: ast.Call, columns: frozenset) -> None:
    """`df.query('points > 10')`, `df.eval('a + b')`, `pd.eval(...)`: one constant expression
    (checked by `_check_expression_text`) and only plain options: no `local_dict`, `resolvers`,
    `target` (which hand pandas objects to reach)."""
    where = f"{call.func.attr}(...)"
    expressions = [a for a in call.args[:1]] + [k.value for k in call.keywords if k.arg == "expr"]
    if len(call.args) > 1 or len(expressions) != 1 or any(
            k.arg not in EXPRESSION_KEYWORDS for k in call.keywords):
        raise ForbiddenCode("expression string", f"{where} takes one constant expression")
    text = expressions[0]
    if not (isinstance(text, ast.Constant) and isinstance(text.value, str)):
        raise ForbiddenCode("expression string", f"{where}: the expression must be a constant string")
    _check_expression_text(text.value, columns, where)


def _rooted_at_a_table_value(node: ast.AST) -> bool:
    """`df`, `df.loc[0]`, `frame['a'].iloc[1:]`: a chain of items and attributes from a variable
    that is not a module."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return isinstance(node, ast.Name) and node.id not in MODULES


def _check_assignment_target(target: ast.AST, columns: frozenset) -> None:
    if isinstance(target, ast.Name):
        return
    if isinstance(target, (ast.Tuple, ast.List)):
        for item in target.elts:
            _check_assignment_target(item, columns)
        return
    if isinstance(target, ast.Starred):
        _check_assignment_target(target.value, columns)
        return
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
        return  # df['new'] = ..., counts[k] = ...
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute) \
            and isinstance(target.value.value, ast.Name) and target.value.attr in ("loc", "iloc", "at", "iat"):
        return  # df.loc[mask, 'c'] = ...
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
            and target.value.id not in MODULES and target.attr in ("columns", "index", "name"):
        return  # df.columns = [...]
    if isinstance(target, ast.Attribute) and target.attr in columns and _rooted_at_a_table_value(target.value):
        return  # df.A = df.A.round(), df.loc[0].Email = ...: an existing column, by attribute
    raise ForbiddenCode("assignment", "only plain names, columns of a frame and df.columns/index may be assigned")


def _check_def(node: ast.FunctionDef, allowed_returns: set) -> None:
    """A `def` is accepted only as a lambda with a name: no decorator, and a body of one
    `return <expression>` (after an optional docstring)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if node.decorator_list or getattr(node, "type_params", None) or node.name.startswith("_") \
            or len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        raise ForbiddenCode("def", "a def may only return one expression (no decorators, no statements)")
    allowed_returns.add(id(body[0]))


def _column_attributes(tables, nodes: list) -> frozenset:
    """Columns reachable as attributes (`df.points`): those of the tables and those the code
    creates (`df['new'] = ...`), if they are identifiers without a leading underscore that are
    not also an attribute of DataFrame or Series (there pandas returns its own)."""
    import pandas as pd  # already imported wherever the check runs (a jailed child cannot import)

    created = [node.slice.value for node in nodes if isinstance(node, ast.Subscript)
               and isinstance(node.ctx, ast.Store) and isinstance(node.slice, ast.Constant)]
    specs = tables.values() if isinstance(tables, dict) else []
    names = set()
    for columns in [created] + [spec.get("columns", []) if isinstance(spec, dict) else [] for spec in specs]:
        for column in columns:
            if isinstance(column, str) and column.isidentifier() and not column.startswith("_") \
                    and not hasattr(pd.DataFrame, column) and not hasattr(pd.Series, column):
                names.add(column)
    return frozenset(names)


def _all_columns(tables) -> frozenset:
    """Every column name of the tables (for backticks in expression strings)."""
    if not isinstance(tables, dict):
        return frozenset()
    return frozenset(c for spec in tables.values() if isinstance(spec, dict)
                     for c in spec.get("columns", []) if isinstance(c, str))


ATTRIBUTES_ALLOWED = ALLOWED_ATTRIBUTES | EXPRESSION_METHODS | {"format"}
NOT_PASSED_ON = STRING_DISPATCH | BUFFER_METHODS | EXPRESSION_METHODS | {"format"}


def check_code(code: str, table_names=()) -> ast.Module:
    """Parse `code` and refuse anything outside the allowlist (raises SyntaxError or
    ForbiddenCode); returns the tree. `table_names`: the names of the tables, or the tables
    themselves ({name: {"columns": [...], ...}}), whose columns may then be read as attributes
    and quoted with backticks in expression strings. One walk over the tree: linear in the
    code's size, which is capped before parsing."""
    if len(code) > MAX_CODE_CHARS:
        raise ForbiddenCode("too long", f"{len(code)} characters; generated code is at most {MAX_CODE_CHARS}")
    tree = ast.parse(code, mode="exec")
    nodes = list(ast.walk(tree))
    columns = _column_attributes(table_names, nodes)
    all_columns = _all_columns(table_names)
    functions = _function_names(tree)
    stringy = _stringy_nodes(nodes)
    returns: set = set()
    called = set()
    for node in nodes:
        kind = type(node)
        if kind not in ALLOWED_NODES:
            raise ForbiddenCode(f"syntax: {kind.__name__}", f"{kind.__name__} is not allowed")
        if kind is ast.Name:
            if node.id.startswith("_"):
                raise ForbiddenCode("underscore name", f"name {node.id!r} is not allowed")
        elif kind is ast.arg and node.arg.startswith("_"):
            raise ForbiddenCode("underscore name", f"name {node.arg!r} is not allowed")
        elif kind is ast.Attribute:
            if node.attr.startswith("_"):
                raise ForbiddenCode("underscore attribute", f"attribute {node.attr!r} is not allowed")
            if node.attr not in ATTRIBUTES_ALLOWED and node.attr not in columns:
                raise ForbiddenCode("attribute", f"attribute {node.attr!r} is not in the allowlist")
        elif kind is ast.keyword and node.arg in PATH_KEYWORDS:
            raise ForbiddenCode("file argument", f"{node.arg}= (a file to write) is not allowed")
        elif kind is ast.Call:
            called.add(id(node.func))
            if isinstance(node.func, ast.Attribute):
                if node.func.attr == "to_string" and node.args:
                    raise ForbiddenCode("file argument", "to_string() takes a file as its first argument")
                if node.func.attr in STRING_DISPATCH:
                    _check_dispatch(node, functions, stringy)
                elif node.func.attr in EXPRESSION_METHODS:
                    _check_expression_call(node, all_columns)
                elif node.func.attr == "format":
                    _check_format(node)
        elif kind in (ast.Assign, ast.AugAssign, ast.AnnAssign):
            for target in (node.targets if kind is ast.Assign else [node.target]):
                _check_assignment_target(target, columns)
        elif kind is ast.FunctionDef:
            _check_def(node, returns)
        elif kind is ast.Return and id(node) not in returns:
            raise ForbiddenCode("def", "return outside a one-expression def")
    # A dispatching method or `format` anywhere but as the called function of a checked call
    # (`f = df.agg; f(name)`, `df.pipe(pd.DataFrame.agg, name)`) would dodge the checks above.
    # (ast.walk is breadth-first: every Call is seen before the Attribute it calls.)
    for node in nodes:
        if type(node) is ast.Attribute and node.attr in NOT_PASSED_ON and id(node) not in called:
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
