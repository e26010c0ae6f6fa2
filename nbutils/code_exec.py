"""Run untrusted pandas code in a sandbox, and score generated code by what it computes.

Text-to-code is judged by execution, as WikiSQL and Spider judge text-to-SQL: the generated code
and the reference run against the same tables, and equal results count as correct
(**execution accuracy**). BLEU or exact match punish `df.col` for `df['col']`; execution does not.

Generated code is untrusted, so it never runs in the notebook's process. The layers, each
enough to stop the attacks the tests try, together defence in depth:

1. A static check (AST) before anything runs: no `import`, no names or attributes with a leading
   underscore (so no dunder walks such as `().__class__.__base__.__subclasses__()`), no
   frame/generator internals (`gi_frame`, `f_globals`, ...), no file or eval APIs of pandas and
   numpy (`read_*`, `to_csv`, `to_pickle`, `np.load`, `eval`, `query`, ...).
2. A minimal namespace: the tables, `pd` and `np` behind read-only views that hide their
   submodules (no `pd.io.common.os`), and a short list of harmless builtins (no `open`,
   `__import__`, `eval`, `exec`, `getattr`, ...).
3. A separate process: a worker (started once, pandas imported once) forks a child per snippet.
   The child drops to user `nobody` when started as root, closes every file descriptor but its
   result pipe and limits itself with `setrlimit`: no new file descriptors (so no `open`, no
   socket), no file writes (RLIMIT_FSIZE 0), no new processes (RLIMIT_NPROC 0), a memory cap
   (RLIMIT_AS) and a CPU cap; the worker kills it at the wall-clock time limit. Whatever the
   snippet does to pandas dies with the child, so one snippet cannot change the next one's
   result. The result comes back as JSON (never pickle), already reduced to plain values.

Outcomes: `correct`, or a failure kind: `wrong_result`, `syntax_error`, `runtime_error`,
`timeout`, `memory_limit`, `forbidden` (refused by the static check). Linux only (fork, /proc);
macOS works without the memory cap.
"""

from __future__ import annotations

import ast
import json
import math
import os
import queue
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FAILURE_KINDS = ("wrong_result", "syntax_error", "runtime_error", "timeout", "memory_limit",
                 "forbidden")
OUTCOMES = ("correct",) + FAILURE_KINDS
# A reference that does not run gives nothing to compare with: reported, not scored.
REFERENCE_ERROR = "reference_error"
RESULT_NAME = "result"  # code may leave its answer in `result = ...` instead of a last expression

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MEMORY_MB = 512
MAX_RESULT_BYTES = 4_000_000
_NOBODY = 65534

# --- 1. the static check ----------------------------------------------------------------------

# Attribute names that read or write files, evaluate strings as code, or change global state.
DENIED_ATTRIBUTES = frozenset({
    "eval", "query", "load", "loads", "save", "savez", "savez_compressed", "savetxt", "loadtxt",
    "genfromtxt", "fromfile", "tofile", "fromregex", "memmap", "DataSource", "dump", "dumps",
    "ExcelWriter", "ExcelFile", "HDFStore", "to_pickle", "to_csv", "to_excel", "to_parquet",
    "to_feather", "to_hdf", "to_sql", "to_stata", "to_orc", "to_xml", "to_html", "to_latex",
    "to_json", "to_markdown", "to_clipboard", "to_gbq", "set_option", "reset_option",
    "option_context", "options", "show_versions", "ctypes", "ctypeslib", "system", "popen",
    "format_map", "mro",
})
# Prefixes of the same kind: pandas' readers, and the internals of frames, generators,
# coroutines, code objects and tracebacks (the classic way from a generator to real globals).
DENIED_PREFIXES = ("_", "read_", "f_", "gi_", "cr_", "ag_", "co_", "tb_", "func_", "im_")
# Methods that look a method up by its name in a string: `df.agg('to_csv', path)`,
# `df.apply('eval', ...)`. Their string arguments get the attribute check too.
STRING_DISPATCH = frozenset({"agg", "aggregate", "apply", "transform", "pipe", "map", "applymap"})

SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset",
    "int", "isinstance", "len", "list", "map", "max", "min", "pow", "range", "reversed", "round",
    "set", "slice", "sorted", "str", "sum", "tuple", "zip", "True", "False", "None",
    "ArithmeticError", "Exception", "IndexError", "KeyError", "TypeError", "ValueError",
    "ZeroDivisionError",
)


class ForbiddenCode(ValueError):
    """The code uses a construct the sandbox does not allow."""


def _attribute_denied(name: str) -> bool:
    return name in DENIED_ATTRIBUTES or name.startswith(DENIED_PREFIXES)


def _method_name_denied(name: str) -> bool:
    return name in DENIED_ATTRIBUTES or name.startswith(("__", "read_"))


def check_code(code: str, table_names=()) -> ast.Module:
    """Parse `code` and refuse what the sandbox does not allow (raises SyntaxError or
    ForbiddenCode); returns the tree."""
    tree = ast.parse(code, mode="exec")
    tables = set(table_names)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            raise ForbiddenCode("import statements are not allowed")
        if isinstance(node, (ast.Global, ast.Nonlocal, ast.ClassDef, ast.AsyncFunctionDef,
                             ast.Await, ast.Yield, ast.YieldFrom)):
            raise ForbiddenCode(f"{type(node).__name__} is not allowed")
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            raise ForbiddenCode(f"name {node.id!r} is not allowed")
        if isinstance(node, ast.Attribute) and _attribute_denied(node.attr):
            raise ForbiddenCode(f"attribute {node.attr!r} is not allowed")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in STRING_DISPATCH:
            for argument in [*node.args, *(k.value for k in node.keywords)]:
                # A name string, a list of them, or the values of {column: name} (not the keys:
                # those are column names such as '_number_of_votes').
                values = (argument.elts if isinstance(argument, (ast.List, ast.Tuple, ast.Set))
                          else argument.values if isinstance(argument, ast.Dict) else [argument])
                for value in values:
                    inner = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
                    for item in inner:
                        if isinstance(item, ast.Constant) and isinstance(item.value, str) \
                                and _method_name_denied(item.value):
                            raise ForbiddenCode(f"{node.func.attr}({item.value!r}) is not allowed")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    # `df.columns = [...]` is pandas; `pd.DataFrame.sum = ...` is tampering.
                    if isinstance(sub, ast.Attribute) and not (
                            isinstance(sub.value, ast.Name) and sub.value.id in tables):
                        raise ForbiddenCode("assigning attributes of anything but a table is not allowed")
    return tree


def _compile(code: str, table_names, static_check: bool = True) -> object:
    """Check, then compile so that a last bare expression is kept as the result."""
    tree = check_code(code, table_names) if static_check else ast.parse(code, mode="exec")
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        tree.body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(id="__sandbox_result__", ctx=ast.Store())], value=last.value),
            last)
        ast.fix_missing_locations(tree)
    return compile(tree, "<generated>", "exec")


# --- 2. the namespace -------------------------------------------------------------------------

class _ModuleView:
    """Read-only view of pandas or numpy: public, non-module, non-denied attributes only."""

    __slots__ = ("_view_of",)

    def __init__(self, module):
        object.__setattr__(self, "_view_of", module)

    def __getattr__(self, name):
        import types

        module = object.__getattribute__(self, "_view_of")
        if _attribute_denied(name):
            raise AttributeError(f"{module.__name__}.{name} is not available in the sandbox")
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            raise AttributeError(f"{module.__name__}.{name} (a module) is not available in the sandbox")
        return value

    def __setattr__(self, name, value):
        raise AttributeError("the sandbox's modules are read-only")

    __delattr__ = __setattr__


def _namespace(frames: dict) -> dict:
    import builtins

    import numpy as np
    import pandas as pd

    safe = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
    return {"__builtins__": safe, "pd": _ModuleView(pd), "np": _ModuleView(np), **frames}


# --- canonical results: what a result is, as plain JSON values ---------------------------------

def _cell(value):
    import numpy as np
    import pandas as pd

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
        return value
    if isinstance(value, (pd.Timestamp, pd.Timedelta)):
        return str(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_cell(v) for v in list(value)[:1000]]
    if hasattr(value, "item") and callable(value.item):
        try:
            return _cell(value.item())
        except (TypeError, ValueError):
            pass
    return repr(value)[:200]


def _named_index(index) -> bool:
    """A named index (groupby keys, value_counts) carries part of the answer; a plain row index
    (what filtering keeps) does not, so it is dropped."""
    return any(name is not None for name in index.names)


def canonical(value) -> dict:
    """A result as {"kind": scalar|series|frame|list, ...} of plain values, for comparison.

    Frames and Series become rows of cells; a named index becomes leading columns.
    """
    import numpy as np
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        frame = value.reset_index() if _named_index(value.index) else value
        return {"kind": "frame", "columns": [str(c) for c in frame.columns],
                "rows": [[_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)]}
    if isinstance(value, pd.Series):
        if _named_index(value.index):
            frame = value.reset_index(name="\0value")
            return {"kind": "series", "columns": [str(c) for c in frame.columns],
                    "rows": [[_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)]}
        return {"kind": "series", "columns": [str(value.name)], "rows": [[_cell(v)] for v in value.tolist()]}
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return {"kind": "list", "columns": None, "rows": [[_cell(v) for v in row] for row in value.tolist()]}
    if isinstance(value, (pd.Index, np.ndarray, list, tuple, set, frozenset)):
        items = list(value)
        if isinstance(value, (set, frozenset)):
            items = sorted(items, key=repr)
        return {"kind": "list", "columns": None,
                "rows": [[_cell(v) for v in item] if isinstance(item, (list, tuple)) else [_cell(item)]
                         for item in items]}
    if isinstance(value, dict):
        return {"kind": "list", "columns": None, "rows": [[_cell(k), _cell(v)] for k, v in value.items()]}
    return {"kind": "scalar", "value": _cell(value)}


def _cells_equal(a, b, rel_tol: float = 1e-6) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):  # bools count as 0/1, ints as floats
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_cells_equal(x, y, rel_tol) for x, y in zip(a, b))
    return a == b


def _sort_key(row) -> str:
    def norm(v):
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, (int, float)):
            return round(float(v), 6)
        return v
    return json.dumps([norm(v) for v in row], default=str)


def is_order_sensitive(reference: str) -> bool:
    """Rows are compared in order only when the reference orders them (as ORDER BY in Spider)."""
    return bool(re.search(r"sort_values|sort_index|nlargest|nsmallest|\bsorted\(|\.rank\(", reference))


def results_match(predicted: dict, gold: dict, ordered: bool = False) -> bool:
    """Whether two canonical results are the same answer.

    Values are compared with a relative tolerance of 1e-6; the row index is ignored unless named;
    row order counts only if `ordered`; column names count only when both results are frames
    (`rename` answers), so a Series and a one-column frame with the same values match, as do a
    one-cell result and a scalar.
    """
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
    if predicted["kind"] == gold["kind"] == "frame" and predicted["columns"] != gold["columns"]:
        return False
    if not ordered:
        rows_p, rows_g = sorted(rows_p, key=_sort_key), sorted(rows_g, key=_sort_key)
    return all(_cells_equal(p, g) for p, g in zip(rows_p, rows_g))


# --- 3. the process: a worker that forks one jailed child per snippet --------------------------

def _send(stream, message: dict) -> None:
    data = json.dumps(message).encode()
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def _receive(stream) -> dict | None:
    header = stream.read(4)
    if len(header) < 4:
        return None
    (size,) = struct.unpack(">I", header)
    data = stream.read(size)
    return json.loads(data) if len(data) == size else None


def _virtual_memory_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _jail(result_fd: int, timeout: float, memory_mb: int) -> None:
    """In the forked child: keep only the result pipe (as fd 3), drop root, then set limits."""
    import resource

    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.dup2(result_fd, 3)
    os.closerange(4, 1 << 16)
    if os.geteuid() == 0:  # root ignores RLIMIT_NPROC and could raise its own limits
        os.setgroups([])
        os.setgid(_NOBODY)
        os.setuid(_NOBODY)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails, no kill
    vm = _virtual_memory_bytes()
    limits = [
        (resource.RLIMIT_NOFILE, 4),          # fds 0-3 are taken: no open(), no socket()
        (resource.RLIMIT_FSIZE, 0),           # no file grows
        (resource.RLIMIT_NPROC, 0),           # no fork, so no os.system or subprocess
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, int(math.ceil(timeout)) + 1),
    ]
    if vm is not None:  # the child starts as a copy of the worker: cap growth beyond that
        limits.append((resource.RLIMIT_AS, vm + memory_mb * 1024 * 1024))
    for limit, value in limits:
        resource.setrlimit(limit, (value, value))


def _child_run(compiled, frames: dict) -> dict:
    try:
        namespace = _namespace(frames)
        exec(compiled, namespace)
        if "__sandbox_result__" in namespace:
            value = namespace["__sandbox_result__"]
        elif RESULT_NAME in namespace:
            value = namespace[RESULT_NAME]
        else:
            return {"status": "runtime_error", "error": "the code computes no value (no final "
                    f"expression and no `{RESULT_NAME} = ...`)"}
        return {"status": "ok", "value": canonical(value)}
    except MemoryError:
        return {"status": "memory_limit", "error": "MemoryError"}
    except BaseException as err:  # noqa: BLE001 - anything the snippet raises is its failure
        return {"status": "runtime_error", "error": f"{type(err).__name__}: {err}"[:300]}


def _run_in_child(compiled, frames: dict, timeout: float, memory_mb: int) -> dict:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_fd)
            _jail(write_fd, timeout, memory_mb)
            outcome = _child_run(compiled, frames)
            try:
                data = json.dumps(outcome).encode()
            except (TypeError, ValueError, MemoryError) as err:
                data = json.dumps({"status": "runtime_error", "error": f"unserializable result: {err}"[:300]}).encode()
            if len(data) > MAX_RESULT_BYTES:
                data = json.dumps({"status": "runtime_error", "error": "result too large"}).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(3, view):]
            code = 0
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)
    os.close(write_fd)
    chunks, size, timed_out = [], 0, False
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RESULT_BYTES + 1024:
                break
    finally:
        os.close(read_fd)
    # Reap the child; one that closed its pipe but lingers is killed at the deadline.
    while True:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            break
        if timed_out or time.monotonic() > deadline:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.001)
    if timed_out:
        return {"status": "timeout", "error": f"no result within {timeout:g} s"}
    if finished and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return {"status": "timeout", "error": "CPU time limit"}
        if not chunks:
            return {"status": "runtime_error", "error": f"killed by signal {sig}"}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return {"status": "runtime_error", "error": "the snippet ended without a result"}


def _frames(tables: dict) -> dict:
    import pandas as pd

    return {name: pd.DataFrame(spec["rows"], columns=spec["columns"]) for name, spec in tables.items()}


def _warm_up() -> None:
    """Touch what generated code commonly calls, so lazy imports (which would need new file
    descriptors, refused in the child) happen here, once."""
    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"a": ["x", "y", "x"], "b": [1.0, 2.0, 3.0], "c": [3, 1, 2]})
    df.groupby("a").agg({"b": "sum", "c": "mean"})
    df.groupby("a")["b"].describe()
    df.merge(df, on="a").sort_values("b_x").head(2)
    df["a"].str.contains("x").sum(), df["a"].str.upper(), df["a"].value_counts()
    df.pivot_table(index="a", values="b", aggfunc="mean")
    pd.to_datetime(pd.Series(["2020-01-02"])).dt.year
    df.describe(), df["b"].quantile(0.5), df.nlargest(2, "b"), np.where(df["b"] > 1, 1, 0)
    df.apply(lambda row: row["b"], axis=1), df["b"].rank(), df["c"].cumsum()
    canonical(df), canonical(df["b"]), canonical(df.groupby("a")["b"].sum()), json.dumps(canonical(1.5))


def _worker_main() -> None:
    """The worker process: read requests, answer each with the result of a jailed child."""
    # No pyarrow: its thread pool must not be forked, and without it each fork copies a third
    # less memory. pandas then stores strings as Python objects.
    sys.modules.setdefault("pyarrow", None)
    import pandas as pd

    pd.set_option("mode.string_storage", "python")
    _warm_up()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but protocol messages may reach the parent's pipe
    _send(stdout, {"status": "ready"})
    while True:
        request = _receive(stdin)
        if request is None:
            return
        tables = request["tables"]
        try:
            # static_check False is only for tests of the process layer on its own.
            compiled = _compile(request["code"], tables, request.get("static_check", True))
        except SyntaxError as err:
            _send(stdout, {"status": "syntax_error", "error": f"{err.msg} (line {err.lineno})"})
            continue
        except ForbiddenCode as err:
            _send(stdout, {"status": "forbidden", "error": str(err)})
            continue
        except (ValueError, RecursionError, MemoryError) as err:  # compile() refusing odd input
            _send(stdout, {"status": "syntax_error", "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        try:
            frames = _frames(tables)
        except Exception as err:  # noqa: BLE001 - a bad table spec is the caller's error
            _send(stdout, {"status": "runtime_error", "error": f"bad table: {err}"[:300]})
            continue
        _send(stdout, _run_in_child(compiled, frames, float(request["timeout"]), int(request["memory_mb"])))


@dataclass
class RunResult:
    status: str  # "ok" or a failure kind other than wrong_result
    value: dict | None = None  # the canonical result when ok
    error: str = ""


class _Worker:
    """One worker process (pandas imported once) that forks a jailed child per snippet."""

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.workdir: tempfile.TemporaryDirectory | None = None

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        package_parent = str(Path(__file__).resolve().parent.parent)
        boot = (f"import sys; sys.path.insert(0, {package_parent!r}); "
                "from nbutils.code_exec import _worker_main; _worker_main()")
        # A minimal environment: no tokens or keys of the notebook's for the snippets to find,
        # and one thread per BLAS/OpenMP pool (threads and fork do not mix).
        env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL", "LD_LIBRARY_PATH")
               if key in os.environ}
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   NUMEXPR_MAX_THREADS="1", PYTHONHASHSEED="0")
        self.workdir = tempfile.TemporaryDirectory(prefix="sandbox-")
        os.chmod(self.workdir.name, 0o755)  # the child runs as nobody, in this folder
        # -I: no PYTHONPATH, no user site, no current folder on sys.path.
        self.process = subprocess.Popen([sys.executable, "-I", "-c", boot], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, cwd=self.workdir.name,
                                        start_new_session=True)
        ready = _receive(self.process.stdout)
        if not ready or ready.get("status") != "ready":
            self.close()
            raise RuntimeError("the code sandbox's worker process failed to start")

    def close(self, kill: bool = False) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                if kill:  # the worker and any child it forked (one process group)
                    os.killpg(self.process.pid, signal.SIGKILL)
                else:
                    self.process.stdin.close()  # the worker exits at the end of its input
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.process = None
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None

    def request(self, message: dict, wait_s: float) -> dict | None:
        """Send one request; the reply, or None if the worker died or hung (then it is gone)."""
        self.start()
        try:
            _send(self.process.stdin, message)
            ready, _, _ = select.select([self.process.stdout], [], [], wait_s)
            reply = _receive(self.process.stdout) if ready else None
        except (OSError, ValueError):
            reply = None
        if reply is None:
            self.close(kill=True)
        return reply


class Sandbox:
    """Worker processes that run untrusted snippets, one jailed child each; `run` is thread-safe
    and runs as many snippets at once as there are workers.

        with Sandbox(timeout=2.0, memory_mb=512) as box:
            box.run("df['a'].sum()", {"df": {"columns": ["a"], "rows": [[1], [2]]}})

    `tables` maps each name the code may use to {"columns": [...], "rows": [[...], ...]}.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                 workers: int = 1, static_check: bool = True):
        if sys.platform == "win32":
            raise OSError("the code sandbox needs fork() and setrlimit(): run on Linux (Kaggle, Colab) or macOS")
        if timeout <= 0 or memory_mb <= 0 or workers < 1:
            raise ValueError(f"timeout, memory_mb and workers must be positive, got {timeout!r}, "
                             f"{memory_mb!r}, {workers!r}")
        self.timeout, self.memory_mb, self.static_check = float(timeout), int(memory_mb), static_check
        self.workers = int(workers)
        self._idle: queue.Queue = queue.Queue()
        self._all: list[_Worker] = []
        self._starting = threading.Lock()
        self.restarts = 0

    def start(self) -> "Sandbox":
        with self._starting:
            if not self._all:
                workers = [_Worker() for _ in range(self.workers)]
                try:
                    for worker in workers:
                        worker.start()
                except Exception:
                    for worker in workers:
                        worker.close(kill=True)
                    raise
                for worker in workers:
                    self._idle.put(worker)
                self._all = workers
        return self

    def close(self) -> None:
        for worker in self._all:
            worker.close()
        self._all = []
        self._idle = queue.Queue()

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, code: str, tables: dict) -> RunResult:
        """Run one snippet against `tables`; never raises for anything the snippet does."""
        if not isinstance(code, str):
            return RunResult("syntax_error", error=f"not code: {type(code).__name__}")
        self.start()
        request = {"code": code, "tables": tables, "timeout": self.timeout,
                   "memory_mb": self.memory_mb, "static_check": self.static_check}
        worker = self._idle.get()
        try:
            reply = worker.request(request, self.timeout + 30)
        finally:
            self._idle.put(worker)  # a dead worker restarts on its next request
        if reply is None:
            self.restarts += 1
            return RunResult("runtime_error", error="the sandbox worker stopped; restarted")
        return RunResult(reply["status"], reply.get("value"), reply.get("error", ""))

    def map(self, function, items) -> list:
        """`function(item)` for each item, with as many in flight as there are workers."""
        from concurrent.futures import ThreadPoolExecutor

        items = list(items)
        if self.workers == 1 or len(items) < 2:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(function, items))


# --- execution accuracy -------------------------------------------------------------------------

@dataclass
class ExecutionReport:
    """Outcome of each example (`correct`, a failure kind, or `reference_error`) and errors."""

    outcomes: list[str]
    errors: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(self.outcomes)
        return {kind: counted.get(kind, 0) for kind in OUTCOMES + (REFERENCE_ERROR,)}

    @property
    def scored(self) -> int:
        return sum(outcome != REFERENCE_ERROR for outcome in self.outcomes)

    @property
    def accuracy(self) -> float:
        """Share of the scored examples (those whose reference runs) that compute the right answer."""
        return self.counts["correct"] / self.scored if self.scored else float("nan")

    def table(self):
        """Outcome kinds with their counts and shares of the scored examples, as a DataFrame."""
        import pandas as pd

        counts = self.counts
        rows = [{"outcome": kind, "examples": counts[kind],
                 "share": counts[kind] / self.scored if self.scored and kind != REFERENCE_ERROR else None}
                for kind in OUTCOMES + (REFERENCE_ERROR,)]
        return pd.DataFrame(rows).set_index("outcome")

    def summary(self) -> dict:
        return {"execution_accuracy": self.accuracy, "scored": self.scored,
                "reference_errors": self.counts[REFERENCE_ERROR],
                "outcomes": {k: v for k, v in self.counts.items() if k != REFERENCE_ERROR}}


class ExecutionEvaluator:
    """Run the references once; then score any list of predictions against their results.

    `table_sets[i]` is a list of table environments for example i (several random tables per
    example, as test-suite accuracy uses, lower the chance that wrong code matches by luck);
    a prediction is correct only if it matches the reference on every one of them.
    """

    def __init__(self, references: list[str], table_sets: list[list[dict]], sandbox: Sandbox):
        if len(references) != len(table_sets):
            raise ValueError(f"{len(references)} references but {len(table_sets)} table sets")
        self.references, self.table_sets, self.sandbox = list(references), table_sets, sandbox
        self.ordered = [is_order_sensitive(ref) for ref in self.references]
        self.gold = sandbox.map(lambda i: [sandbox.run(self.references[i], tables)
                                           for tables in self.table_sets[i]],
                                range(len(self.references)))

    def _score_one(self, i: int, prediction: str) -> tuple[str, str]:
        gold_runs = self.gold[i]
        failed = next((g for g in gold_runs if g.status != "ok"), None)
        if failed is not None or not gold_runs:
            return REFERENCE_ERROR, failed.error if failed else "no tables"
        for tables, gold in zip(self.table_sets[i], gold_runs):
            run = self.sandbox.run(prediction, tables)
            if run.status != "ok":
                return run.status, run.error
            if not results_match(run.value, gold.value, self.ordered[i]):
                return "wrong_result", ""
        return "correct", ""

    def score(self, predictions: list[str]) -> ExecutionReport:
        predictions = list(predictions)
        if len(predictions) != len(self.references):
            raise ValueError(f"{len(predictions)} predictions for {len(self.references)} references")
        scored = self.sandbox.map(lambda i: self._score_one(i, predictions[i]), range(len(predictions)))
        return ExecutionReport([outcome for outcome, _ in scored], [error for _, error in scored])
