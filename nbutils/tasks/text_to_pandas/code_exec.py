"""Run untrusted pandas code in a sandbox, and score generated code by what it computes.

Text-to-code is judged by execution, as WikiSQL and Spider judge text-to-SQL: the generated code
and the reference run against the same tables, and equal results count as correct
(**execution accuracy**). BLEU or exact match punish `df.col` for `df['col']`; execution does not.

Generated code is untrusted, so it never runs in the notebook's process. Defence in depth, each
outer layer holding when the inner ones are bypassed:

1. **An allowlist** (`sandbox_allowlist`): the AST may hold only the Python pandas answers need,
   names only from the tables, `pd`, `np` and harmless builtins, attributes only from a list of
   computing methods, functions given by name only from a list of reductions.
2. **A minimal namespace**: `pd` and `np` behind read-only views that hide their submodules, and
   a short list of builtins (no `open`, `__import__`, `eval`, `getattr`, ...).
3. **A fresh process per snippet**, jailed by the kernel (`sandbox_jail`): a worker (pandas
   imported once, lazily imported modules warmed up) forks one child per snippet; the child points
   fds 0-2 at /dev/null, drops to `nobody` when root, sets rlimits and loads a seccomp-bpf
   allowlist of system calls (no open, socket, kill, ptrace, execve, fork, unlink, ...), runs one
   snippet, writes its reply and exits. Whatever it does to pandas dies with it.
4. **A parent that trusts nothing** (`result_compare`): replies are JSON (never pickle) checked
   against a strict schema (types, sizes, depth); anything else is that snippet's `runtime_error`.
   Only the notebook decides `correct`, and the comparison never raises.

Where the kernel cannot contain the child (macOS, no seccomp), `Sandbox` refuses to start unless
`allow_uncontained=True`; `Sandbox.containment` names the layers in use, for the run record.

Outcomes: `correct`, or a failure kind: `wrong_result`, `syntax_error`, `runtime_error`,
`timeout`, `memory_limit`, `forbidden` (refused by the static check).
"""

from __future__ import annotations

import json
import os
import queue
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

from nbutils.tasks.text_to_pandas.result_compare import (MAX_RESULT_BYTES, canonical, column_order_fixed,  # noqa: F401
                                    is_order_sensitive, parse_reply, results_match, validated_reply)
from nbutils.tasks.text_to_pandas.sandbox_allowlist import (RESULT_NAME, SAFE_BUILTINS, ForbiddenCode,  # noqa: F401
                                       check_code, refusal, refusals)
from nbutils.tasks.text_to_pandas.sandbox_jail import ContainmentUnavailable, build_filter, containment_label, jail, probe

FAILURE_KINDS = ("wrong_result", "syntax_error", "runtime_error", "timeout", "memory_limit",
                 "forbidden")
OUTCOMES = ("correct",) + FAILURE_KINDS
# A reference that does not run gives nothing to compare with: reported, not scored.
REFERENCE_ERROR = "reference_error"
# What a worker may answer for one run (`correct` / `wrong_result` are the notebook's to decide).
RUN_STATUSES = ("ok", "syntax_error", "runtime_error", "timeout", "memory_limit", "forbidden")

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MEMORY_MB = 512
_RESULT_VAR = "__sandbox_result__"


def _compile(code: str, table_names, static_check: bool = True) -> object:
    """Check, then compile so that a last bare expression is kept as the result."""
    import ast

    tree = check_code(code, table_names) if static_check else ast.parse(code, mode="exec")
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        tree.body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(id=_RESULT_VAR, ctx=ast.Store())], value=last.value), last)
        ast.fix_missing_locations(tree)
    return compile(tree, "<generated>", "exec")


# --- 2. the namespace -------------------------------------------------------------------------

class _ModuleView:
    """Read-only view of pandas or numpy: allowlisted, non-module attributes only."""

    __slots__ = ("_view_of",)

    def __init__(self, module):
        object.__setattr__(self, "_view_of", module)

    def __getattr__(self, name):
        import types

        from nbutils.tasks.text_to_pandas.sandbox_allowlist import ALLOWED_ATTRIBUTES, EXPRESSION_METHODS

        module = object.__getattribute__(self, "_view_of")
        if name not in ALLOWED_ATTRIBUTES and name not in EXPRESSION_METHODS:
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


class _Discard:
    """Where a snippet's `print` goes: nowhere (the caller's sys.stdout may be anything, e.g.
    pytest's capture, when the worker was forked from it)."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _child_run(compiled, frames: dict) -> dict:
    sys.stdout = sys.stderr = _Discard()
    try:
        namespace = _namespace(frames)
        exec(compiled, namespace)
        value = namespace.get(_RESULT_VAR)
        if value is None and RESULT_NAME in namespace:  # `result = ...` then `print(result)`
            value = namespace[RESULT_NAME]
        elif _RESULT_VAR not in namespace:
            return {"status": "runtime_error", "error": "the code computes no value (no final "
                    f"expression and no `{RESULT_NAME} = ...`)"}
        return {"status": "ok", "value": canonical(value)}
    except MemoryError:
        return {"status": "memory_limit", "error": "MemoryError"}
    except BaseException as err:  # noqa: BLE001 - anything the snippet raises is its failure
        try:
            return {"status": "runtime_error", "error": f"{type(err).__name__}: {err}"[:300]}
        except BaseException:  # noqa: BLE001 - an exception whose str() raises
            return {"status": "runtime_error", "error": type(err).__name__[:100]}


def _serialized(outcome: dict) -> bytes:
    try:
        data = json.dumps(outcome).encode()
    except (TypeError, ValueError, MemoryError, RecursionError) as err:
        data = json.dumps({"status": "runtime_error", "error": f"unserializable result: {err}"[:300]}).encode()
    if len(data) > MAX_RESULT_BYTES:
        data = json.dumps({"status": "runtime_error", "error": "result too large"}).encode()
    return data


_vm = {"bytes": None, "requests": 0}


def _worker_vm_bytes() -> int | None:
    """The worker's virtual memory size, which each child starts with (its RLIMIT_AS adds
    `memory_mb` to it). Read from /proc every 32 requests, not in every child: reading it cost
    the child about a tenth of its time (`make bench-sandbox`); in between the worker grows by
    little more than a snippet's tables."""
    from nbutils.tasks.text_to_pandas.sandbox_jail import _virtual_memory_bytes

    if _vm["bytes"] is None or _vm["requests"] % 32 == 0:
        measured = _virtual_memory_bytes()
        _vm["bytes"] = None if measured is None else measured + 16 * 1024 * 1024
    _vm["requests"] += 1
    return _vm["bytes"]


def _run_in_child(compiled, frames: dict, timeout: float, memory_mb: int, rules) -> dict:
    """Fork a child that jails itself and runs one snippet; its reply, checked, or what
    became of it. Never raises for anything the child does."""
    vm_bytes = _worker_vm_bytes()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_fd)
            jail(write_fd, timeout, memory_mb, rules, vm_bytes)
            data = _serialized(_child_run(compiled, frames))
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
            if size > MAX_RESULT_BYTES:
                break
    finally:
        os.close(read_fd)
    # Reap the child; one that closed its pipe but lingers is killed at the deadline.
    status = 0
    while True:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            break
        if timed_out or time.monotonic() > deadline or size > MAX_RESULT_BYTES:
            timed_out = timed_out or size <= MAX_RESULT_BYTES
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.0005)
    if timed_out:
        return {"status": "timeout", "error": f"no result within {timeout:g} s"}
    if finished and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return {"status": "timeout", "error": "CPU time limit"}
        if not chunks:
            return {"status": "runtime_error", "error": f"killed by signal {sig}"}
    return parse_reply(b"".join(chunks))


def _frames(tables: dict) -> dict:
    import pandas as pd

    return {name: pd.DataFrame(spec["rows"], columns=spec["columns"]) for name, spec in tables.items()}


def warm_up() -> None:
    """Import and touch what generated code commonly calls, so pandas' lazy imports (which need
    to open files, refused in the child) happen in the worker, once. Formatting included:
    `repr(df)`, `df.to_string()`, `print(df)` import pandas' format modules on first use. Each
    step on its own: one that fails here (a pandas quirk) must not stop the others."""
    import io

    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"a": ["x", "y", "x"], "b": [1.0, 2.0, 3.0], "c": [3, 1, 2],
                       "d": pd.to_datetime(["2020-01-02", "2021-03-04", "2022-05-06"])})
    steps = [
        lambda: df.groupby("a").agg({"b": "sum", "c": "mean"}),
        lambda: df.groupby("a").agg(total=("b", "sum")),
        lambda: df.groupby("a")["b"].describe(),
        lambda: df.merge(df, on="a").sort_values("b_x").head(2),
        lambda: (df["a"].str.contains("x").sum(), df["a"].str.upper(), df["a"].value_counts()),
        lambda: (df["a"].str.extract(r"(x)"), df["a"].str.split("x"), df["a"].str.len()),
        lambda: (df.pivot_table(index="a", values="b", aggfunc="mean"), pd.crosstab(df["a"], df["c"])),
        lambda: pd.to_datetime(pd.Series(["2020-01-02"])).dt.year,
        lambda: (df["d"].dt.strftime("%Y"), df["d"].dt.day_name(), df["d"].dt.month_name()),
        lambda: (df.describe(), df["b"].quantile(0.5), df.nlargest(2, "b"), np.where(df["b"] > 1, 1, 0)),
        lambda: (df.apply(lambda row: row["b"], axis=1), df["b"].rank(), df["c"].cumsum(), df["b"].round(1)),
        lambda: (pd.cut(df["b"], 2), pd.qcut(df["b"], 2), df["b"].rolling(2).mean(), pd.to_numeric(df["c"])),
        lambda: df.set_index("d").resample("YE").sum(numeric_only=True),
        lambda: (df["b"].astype("category").cat.codes, df.explode("a"), df.melt(id_vars="a")),
        lambda: [(repr(v), str(v)) for v in (df, df["b"], df.groupby("a")["b"].sum(), df.index, df.dtypes,
                                             df.describe(), df["d"], df.set_index("a"), df["b"].mean(),
                                             np.arange(3), df["b"].astype("category"))],
        lambda: (df.to_string(), df["b"].to_string(), df.to_dict(), df.to_dict("records")),
        lambda: df.info(buf=io.StringIO()),
        lambda: (print(df, file=io.StringIO()), f"{df['b'].mean():.2f}", "{} {:.1f}".format(1, 2.0)),
        lambda: (repr(pd.Timestamp("2020-01-01")), repr(pd.Timedelta(days=1)), repr(np.float64(1.5))),
        lambda: (canonical(df), canonical(df["b"]), canonical(df.groupby("a")["b"].sum())),
        lambda: json.dumps(canonical(1.5)),
        lambda: df.sample(2, random_state=0),
        lambda: (df.query("b > 1"), df.query("c > 1 and a == 'x'"), df.eval("b * 2"), pd.eval("1 + 2")),
        lambda: df.query("a.str.contains('x')", engine="python"),
    ]
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001, S112 - a warm-up step that fails only warms less
            continue


def preload() -> None:
    """Import everything a worker and its jailed children use, and warm pandas up. The worker
    calls it; a process that will drop its privileges and then start a `Sandbox(start="fork")`
    calls it first, while it can still read the interpreter's files."""
    import concurrent.futures  # noqa: F401 - Sandbox.map
    import ctypes  # noqa: F401
    import resource  # noqa: F401 - the jail's rlimits

    import pandas  # noqa: F401

    warm_up()
    try:
        build_filter()
    except ContainmentUnavailable:
        pass


def _handle(request: dict, rules) -> dict:
    tables = request["tables"]
    try:
        # static_check False is only for tests of the process layers on their own.
        compiled = _compile(request["code"], tables, request.get("static_check", True))
    except SyntaxError as err:
        return {"status": "syntax_error", "error": f"{err.msg} (line {err.lineno})"}
    except ForbiddenCode as err:
        return {"status": "forbidden", "error": str(err)}
    except (ValueError, RecursionError, MemoryError, TypeError) as err:  # compile() refusing odd input
        return {"status": "syntax_error", "error": f"{type(err).__name__}: {err}"[:300]}
    try:
        frames = _frames(tables)
    except Exception as err:  # noqa: BLE001 - a bad table spec is the caller's error
        return {"status": "runtime_error", "error": f"bad table: {err}"[:300]}
    return _run_in_child(compiled, frames, float(request["timeout"]), int(request["memory_mb"]), rules)


def _worker_main(stdin=None, stdout=None, allow_uncontained: bool = False) -> None:
    """The worker process: read requests, answer each with the result of a jailed child."""
    # No pyarrow: its thread pool must not be forked, and without it each fork copies a third
    # less memory. pandas then stores strings as Python objects.
    sys.modules.setdefault("pyarrow", None)
    import pandas as pd

    pd.set_option("mode.string_storage", "python")  # in the worker only, never the caller's
    preload()
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but protocol messages may reach the parent's pipe
    try:
        rules = build_filter()
        why = probe(rules)
    except ContainmentUnavailable as err:
        rules, why = None, str(err)
    if why is not None:
        rules = None
    root = os.geteuid() == 0
    _send(stdout, {"status": "ready", "containment": containment_label(rules is not None, root),
                   "seccomp_error": why})
    if rules is None and not allow_uncontained:
        return  # the parent raises ContainmentUnavailable with `why`
    while True:
        request = _receive(stdin)
        if request is None:
            return
        try:
            reply = _handle(request, rules)
        except Exception as err:  # noqa: BLE001 - the worker answers every request
            reply = {"status": "runtime_error", "error": f"sandbox worker: {type(err).__name__}: {err}"[:300]}
        _send(stdout, reply)


@dataclass
class RunResult:
    status: str  # "ok" or a failure kind other than wrong_result
    value: dict | None = None  # the canonical result when ok
    error: str = ""


def _worker_env() -> dict:
    """A minimal environment: no tokens or keys of the notebook's for the snippets to find, and
    one thread per BLAS/OpenMP pool (threads and fork do not mix; the jail refuses clone)."""
    env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL", "LD_LIBRARY_PATH")
           if key in os.environ}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               NUMEXPR_MAX_THREADS="1", PYTHONHASHSEED="0")
    return env


class _ForkedProcess:
    """A worker forked from this (already imported) process: the shape of `subprocess.Popen`
    that `_Worker` uses (pid, stdin, stdout, poll, wait)."""

    def __init__(self, workdir: str, allow_uncontained: bool):
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code
            try:
                os.setsid()
                os.dup2(request_read, 0)
                os.dup2(reply_write, 1)
                os.closerange(3, 1 << 16)
                os.chdir(workdir)
                os.environ.clear()
                os.environ.update(_worker_env())
                _worker_main(os.fdopen(0, "rb"), os.fdopen(1, "wb"), allow_uncontained)
            finally:
                os._exit(0)
        os.close(request_read)
        os.close(reply_write)
        self.pid = pid
        self.stdin = os.fdopen(request_write, "wb")
        self.stdout = os.fdopen(reply_read, "rb")
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                finished, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                finished, status = self.pid, 0
            if finished:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("sandbox worker", timeout)
            time.sleep(0.005)
        return self.returncode


def _can_exec_interpreter() -> bool:
    return os.access(os.path.realpath(sys.executable), os.X_OK)


class _Worker:
    """One worker process (pandas imported once) that forks a jailed child per snippet.

    `start="exec"` runs a fresh interpreter (`python -I`, a clean environment): nothing of the
    notebook's memory is in it. `start="fork"` forks this process instead (after `preload()` if
    it can no longer read the interpreter's files, as a process that dropped its privileges
    cannot). A forked worker holds a copy of this process's memory, secrets included, and a
    snippet that got past the allowlist could return what it finds there as its value (the
    kernel cannot tell a stolen string from a result): fork only from a process that holds no
    secrets. `"auto"`: exec whenever this user can run the interpreter (a notebook kernel always
    can), fork otherwise.
    """

    def __init__(self, start: str = "auto", allow_uncontained: bool = False):
        self.process = None
        self.workdir: tempfile.TemporaryDirectory | None = None
        self.start_method = start
        self.allow_uncontained = allow_uncontained
        self.containment = ""

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        method = self.start_method
        if method == "auto":
            method = "exec" if _can_exec_interpreter() else "fork"
        self.workdir = tempfile.TemporaryDirectory(prefix="sandbox-")
        os.chmod(self.workdir.name, 0o755)  # the child runs as nobody, in this folder
        if method == "fork":
            self.process = _ForkedProcess(self.workdir.name, self.allow_uncontained)
        else:
            # The folder holding the `nbutils` package (this file is nbutils/tasks/text_to_pandas/).
            package_parent = str(Path(__file__).resolve().parents[3])
            boot = (f"import sys; sys.path.insert(0, {package_parent!r}); "
                    "from nbutils.tasks.text_to_pandas.code_exec import _worker_main; "
                    f"_worker_main(allow_uncontained={self.allow_uncontained!r})")
            # -I: no PYTHONPATH, no user site, no current folder on sys.path.
            self.process = subprocess.Popen([sys.executable, "-I", "-c", boot], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, env=_worker_env(),
                                            cwd=self.workdir.name, start_new_session=True)
        try:
            ready = _receive(self.process.stdout)
        except (OSError, ValueError):
            ready = None
        if not ready or ready.get("status") != "ready":
            self.close(kill=True)
            raise RuntimeError("the code sandbox's worker process failed to start")
        self.containment = str(ready.get("containment", ""))
        if ready.get("seccomp_error") and not self.allow_uncontained:
            self.close(kill=True)
            raise ContainmentUnavailable(
                f"the kernel cannot contain generated code here ({ready['seccomp_error']}); "
                "refusing to run it. Set allow_uncontained_execution=True (Sandbox(allow_uncontained=True)) "
                "to run it anyway with only the static check, rlimits and the uid drop.")

    def close(self, kill: bool = False) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                if kill:  # the worker and any child it forked (one process group)
                    self._kill_group()
                else:
                    try:
                        self.process.stdin.close()  # the worker exits at the end of its input
                    except OSError:
                        pass
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._kill_group()
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

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

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
    Refuses to start (ContainmentUnavailable) where seccomp cannot contain the children, unless
    `allow_uncontained`; `containment` then names the layers in use (for the run record).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                 workers: int = 1, static_check: bool = True, allow_uncontained: bool = False,
                 start: str = "auto"):
        if sys.platform == "win32":
            raise OSError("the code sandbox needs fork() and setrlimit(): run on Linux (Kaggle, Colab) or macOS")
        if timeout <= 0 or memory_mb <= 0 or workers < 1:
            raise ValueError(f"timeout, memory_mb and workers must be positive, got {timeout!r}, "
                             f"{memory_mb!r}, {workers!r}")
        if start not in ("auto", "exec", "fork"):
            raise ValueError(f"start={start!r}: expected 'auto', 'exec' or 'fork'")
        self.timeout, self.memory_mb, self.static_check = float(timeout), int(memory_mb), static_check
        self.workers, self.allow_uncontained, self.start_method = int(workers), allow_uncontained, start
        self._idle: queue.Queue = queue.Queue()
        self._all: list[_Worker] = []
        self._starting = threading.Lock()
        self.restarts = 0

    @property
    def containment(self) -> str:
        """The layers each snippet runs under, e.g. `static-check+fresh-process+fds+uid-drop+rlimits+seccomp`."""
        layers = self._all[0].containment if self._all else ""
        return "+".join(filter(None, ["static-check" if self.static_check else "", layers]))

    def start(self) -> "Sandbox":
        with self._starting:
            if not self._all:
                workers = [_Worker(self.start_method, self.allow_uncontained) for _ in range(self.workers)]
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
        reply = validated_reply(reply, RUN_STATUSES)
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
        self.ordered_columns = [column_order_fixed(ref) for ref in self.references]
        self.gold = sandbox.map(lambda i: [sandbox.run(self.references[i], tables)
                                           for tables in self.table_sets[i]],
                                range(len(self.references)))

    def _score_one(self, i: int, prediction: str) -> tuple[str, str]:
        try:
            return self._score_runs(i, prediction)
        except Exception as err:  # noqa: BLE001 - the evaluation goes on, whatever one example does
            return "runtime_error", f"evaluation error: {type(err).__name__}"

    def _score_runs(self, i: int, prediction: str) -> tuple[str, str]:
        gold_runs = self.gold[i]
        failed = next((g for g in gold_runs if g.status != "ok"), None)
        if failed is not None or not gold_runs:
            return REFERENCE_ERROR, failed.error if failed else "no tables"
        for tables, gold in zip(self.table_sets[i], gold_runs):
            run = self.sandbox.run(prediction, tables)
            if run.status != "ok":
                return run.status, run.error
            if not results_match(run.value, gold.value, self.ordered[i], self.ordered_columns[i]):
                return "wrong_result", ""
        return "correct", ""

    def score(self, predictions: list[str]) -> ExecutionReport:
        predictions = list(predictions)
        if len(predictions) != len(self.references):
            raise ValueError(f"{len(predictions)} predictions for {len(self.references)} references")
        scored = self.sandbox.map(lambda i: self._score_one(i, predictions[i]), range(len(predictions)))
        return ExecutionReport([outcome for outcome, _ in scored], [error for _, error in scored])
