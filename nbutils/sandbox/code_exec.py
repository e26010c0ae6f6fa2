"""Run untrusted pandas code in a sandbox, and score generated code by what it computes.

Text-to-code is judged by execution, as WikiSQL and Spider judge text-to-SQL: the generated code
and the reference run against the same tables, and equal results count as correct
(**execution accuracy**). BLEU or exact match punish `df.col` for `df['col']`; execution does not.

Generated code is untrusted, so it never runs in the notebook's process. Defence in depth, each
outer layer holding when the inner ones are bypassed:

1. **An allowlist** (`sandbox_allowlist`): the AST may hold only the Python pandas answers need,
   no name or attribute with a leading underscore, attributes only from a list of computing
   methods and the tables' columns, functions given by name only from a list of reductions,
   `query` / `eval` strings only in a grammar pandas cannot read differently. It runs in the
   jailed child, under the snippet's limits, on at most 16 kB of code.
2. **A minimal namespace**: `pd` and `np` behind read-only views that hide their submodules, and
   a short list of builtins (no `open`, `__import__`, `eval`, `getattr`, ...).
3. **A fresh process per snippet**, jailed by the kernel (`sandbox_jail`): a worker (a fresh
   interpreter, never a fork of the notebook; pandas imported once, lazily imported modules warmed
   up) forks one child per snippet and never reads a snippet, its tables or its result, so no
   child finds another request's code or value in the memory it starts with. The child points
   fds 0-2 at /dev/null, drops to `nobody` when root, sets rlimits and loads a seccomp-bpf
   allowlist of system calls (no open, stat, socket, kill, ptrace, execve, fork, unlink, ...),
   checks and runs one snippet, writes its reply and exits. Whatever it does to pandas dies with it.
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

from nbutils.sandbox.result_compare import (MAX_RESULT_BYTES, ResultTooLarge, canonical,  # noqa: F401
                                    column_order_fixed, is_order_sensitive, parse_reply, results_match,
                                    validated_reply)
from nbutils.sandbox.allowlist import (RESULT_NAME, SAFE_BUILTINS, ForbiddenCode,  # noqa: F401
                                       check_code, refusal, refusals)
from nbutils.sandbox.jail import ContainmentUnavailable, build_filter, containment_label, jail, probe

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

        from nbutils.sandbox.allowlist import ALLOWED_ATTRIBUTES, EXPRESSION_METHODS

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
#
# The worker is a fresh interpreter (`python -I`, a minimal environment), never a fork of the
# caller: a fork holds the caller's memory, environment block included, even after os.environ is
# cleared. It imports and warms up pandas, then forks one child per snippet, and never reads a
# snippet, its tables or its result itself: the parent passes each child a pipe to read its
# request from and a pipe to write its reply to (over a Unix socket, as file descriptors), and the
# worker only waits for the child and says how it ended. So every child starts from a worker that
# has held no request, and cannot find an earlier snippet's code, a reference or its result in the
# memory it was forked with; only the parent compares results.

_CONTROL = struct.Struct(">d I ?")  # parent -> worker, with two fds: timeout, memory_mb, static_check
_ENDING = struct.Struct(">? i")  # worker -> parent: timed out, the child's signal (0: it exited)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


class _Discard:
    """Where a snippet's `print` goes: nowhere, at no cost (no system call: fd 1 is /dev/null)."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _child_run(code: str, tables: dict, frames: dict, static_check: bool = True) -> dict:
    """In the jailed child: check, compile and run one snippet, under the snippet's own limits
    (so a huge or deeply nested snippet costs its own time and memory, not the worker's)."""
    sys.stdout = sys.stderr = _Discard()
    try:
        compiled = _compile(code, tables, static_check)
    except SyntaxError as err:
        return {"status": "syntax_error", "error": f"{err.msg} (line {err.lineno})"}
    except ForbiddenCode as err:
        return {"status": "forbidden", "error": str(err)[:300]}
    except MemoryError:
        return {"status": "memory_limit", "error": "MemoryError while parsing"}
    except (ValueError, RecursionError, TypeError) as err:  # compile() refusing odd input
        return {"status": "syntax_error", "error": f"{type(err).__name__}: {err}"[:300]}
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
    except ResultTooLarge as err:
        return {"status": "runtime_error", "error": str(err)[:300]}
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
    from nbutils.sandbox.jail import _virtual_memory_bytes

    if _vm["bytes"] is None or _vm["requests"] % 32 == 0:
        measured = _virtual_memory_bytes()
        _vm["bytes"] = None if measured is None else measured + 16 * 1024 * 1024
    _vm["requests"] += 1
    return _vm["bytes"]


def _child(request_fd: int, reply_fd: int, timeout: float, memory_mb: int, rules, static_check: bool,
           vm_bytes) -> None:
    """The forked child: read the request, build the tables, jail itself, run, reply. Never returns."""
    code = 1
    try:
        request = json.loads(_read_all(request_fd))
        try:
            frames = _frames(request["tables"])
            bad_table = None
        except Exception as err:  # noqa: BLE001 - a bad table spec is the caller's error
            frames, bad_table = {}, {"status": "runtime_error", "error": f"bad table: {err}"[:300]}
        jail(reply_fd, timeout, memory_mb, rules, vm_bytes)  # from here: fd 3 is the reply pipe
        outcome = bad_table or _child_run(request["code"], request["tables"], frames, static_check)
        view = memoryview(_serialized(outcome))
        while view:
            view = view[os.write(3, view):]
        code = 0
    except BaseException:  # noqa: BLE001
        pass
    os._exit(code)


def _wait_for(pid: int, timeout: float) -> tuple[bool, int]:
    """Wait for the child `pid` at most `timeout` seconds, kill it then; (timed out, its signal)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux): poll
        pidfd = None
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        if pidfd is None:
            time.sleep(min(remaining, 0.0005))
        else:
            select.select([pidfd], [], [], remaining)
    if pidfd is not None:
        os.close(pidfd)
    return timed_out, (os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0)


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
    """Import everything a worker and its jailed children use, and warm pandas up (the worker
    calls it before it takes any request)."""
    import concurrent.futures  # noqa: F401 - Sandbox.map
    import ctypes  # noqa: F401
    import resource  # noqa: F401 - the jail's rlimits

    import pandas  # noqa: F401

    warm_up()
    try:
        build_filter()
    except ContainmentUnavailable:
        pass


def _worker_main(allow_uncontained: bool = False, user: int | None = None) -> None:
    """The worker process: fd 0 is a Unix socket to the parent. For each request the parent sends
    the limits and two fds (the child's request and reply pipes); the worker forks a child with
    them, waits for it, and answers how it ended. It never reads a request or a reply. With
    `user`, it drops to that uid once everything is imported (see `Sandbox`)."""
    import socket

    # No pyarrow: its thread pool must not be forked, and without it each fork copies a third
    # less memory. pandas then stores strings as Python objects.
    sys.modules.setdefault("pyarrow", None)
    import pandas as pd

    pd.set_option("mode.string_storage", "python")  # in the worker only, never the caller's
    preload()
    if user is not None:
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)
    control = socket.socket(fileno=0)
    sys.stdout = sys.stderr  # nothing but protocol messages may reach the parent
    try:
        rules = build_filter()
        why = probe(rules)
    except ContainmentUnavailable as err:
        rules, why = None, str(err)
    if why is not None:
        rules = None
    root = os.geteuid() == 0
    ready = json.dumps({"status": "ready", "containment": containment_label(rules is not None, root),
                        "seccomp_error": why}).encode()
    control.sendall(struct.pack(">I", len(ready)) + ready)
    if rules is None and not allow_uncontained:
        return  # the parent raises ContainmentUnavailable with `why`
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, _CONTROL.size, 2, socket.MSG_WAITALL)
        except OSError:
            return
        if len(message) < _CONTROL.size or len(fds) != 2:
            return  # the parent closed the socket (or broke the protocol)
        timeout, memory_mb, static_check = _CONTROL.unpack(message)
        request_fd, reply_fd = fds
        vm_bytes = _worker_vm_bytes()
        pid = os.fork()
        if pid == 0:
            control.close()
            _child(request_fd, reply_fd, timeout, memory_mb, rules, static_check, vm_bytes)
        os.close(request_fd)
        os.close(reply_fd)
        control.sendall(_ENDING.pack(*_wait_for(pid, timeout)))


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


def _recv_exact(sock, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class _Worker:
    """One worker process (a fresh interpreter, pandas imported once) that forks a jailed child
    per snippet. Where this process cannot start a fresh interpreter that imports nbutils and
    pandas (e.g. it dropped its privileges and the interpreter's files are not readable to it),
    there is no clean worker to be had: `start` raises and says why, rather than fork this
    process (a fork would hold its memory: secrets, references and their results)."""

    def __init__(self, allow_uncontained: bool = False, user: int | None = None):
        self.user = user
        self.process = None
        self.control = None
        self.workdir: tempfile.TemporaryDirectory | None = None
        self.allow_uncontained = allow_uncontained
        self.containment = ""

    def start(self) -> None:
        import socket

        if self.process is not None and self.process.poll() is None:
            return
        self.workdir = tempfile.TemporaryDirectory(prefix="sandbox-")
        os.chmod(self.workdir.name, 0o755)  # the child runs as nobody, in this folder
        # The folder holding the `nbutils` package (this file is nbutils/tasks/text_to_pandas/).
        package_parent = str(Path(__file__).resolve().parents[2])
        python, paths = _interpreter()
        boot = _BOOT.format(paths=[package_parent] + paths, allow=self.allow_uncontained, user=self.user)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_path = Path(self.workdir.name) / "worker.log"
        self.control = ours
        why = []
        with theirs, open(log_path, "wb") as log:
            try:
                # -I: no PYTHONPATH, no user site, no current folder on sys.path.
                self.process = subprocess.Popen([python, "-I", "-c", boot], stdin=theirs,
                                                stdout=subprocess.DEVNULL, stderr=log, env=_worker_env(),
                                                cwd=self.workdir.name, start_new_session=True)
            except OSError as err:  # e.g. this uid may not run the interpreter
                why = [f"{type(err).__name__}: {err}"]
        try:
            header = _recv_exact(ours, 4) if self.process else b""
            ready = json.loads(_recv_exact(ours, struct.unpack(">I", header)[0])) if len(header) == 4 else None
        except (OSError, ValueError):
            ready = None
        if not isinstance(ready, dict) or ready.get("status") != "ready":
            self.close(kill=True, keep_workdir=True)
            why = why or log_path.read_text(errors="replace").strip().splitlines()[-1:]
            self.workdir.cleanup()
            self.workdir = None
            raise RuntimeError(
                f"the code sandbox could not start a clean worker ({python} -I as uid {os.geteuid()}): "
                f"{why[0] if why else 'it exited without a word'}. It does not fork this process instead, since "
                "a fork would hold this process's memory (secrets, reference answers). Start the sandbox "
                "before dropping privileges, or as a user who can run this interpreter and read its packages.")
        self.containment = str(ready.get("containment", ""))
        if ready.get("seccomp_error") and not self.allow_uncontained:
            self.close(kill=True)
            raise ContainmentUnavailable(
                f"the kernel cannot contain generated code here ({ready['seccomp_error']}); "
                "refusing to run it. Set allow_uncontained_execution=True (Sandbox(allow_uncontained=True)) "
                "to run it anyway with only the static check, rlimits and the uid drop.")

    def close(self, kill: bool = False, keep_workdir: bool = False) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                if kill:  # the worker and any child it forked (one process group)
                    self._kill_group()
                else:
                    try:
                        self.control.shutdown(2)  # the worker exits at the end of its input
                    except OSError:
                        pass
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._kill_group()
                    self.process.wait()
            self.process = None
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.workdir is not None and not keep_workdir:
            self.workdir.cleanup()
            self.workdir = None

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def request(self, message: dict, timeout: float, memory_mb: int, static_check: bool,
                wait_s: float) -> dict | None:
        """Run one request in a child of this worker: its checked reply, or None if the worker
        died or hung (then it is gone)."""
        import socket

        if self.process is None:  # not started, or closed after it died (not by waitpid: a
            self.start()           # process forked from the one that started it may use it)
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        try:
            socket.send_fds(self.control, [_CONTROL.pack(timeout, memory_mb, static_check)],
                            [request_read, reply_write])
            os.close(request_read)
            os.close(reply_write)
            request_read = reply_write = None
            try:
                view = memoryview(json.dumps(message).encode())
                while view:
                    view = view[os.write(request_write, view):]
            except BrokenPipeError:
                pass  # the child died first; its ending says how
            os.close(request_write)
            request_write = None
            deadline = time.monotonic() + wait_s
            chunks, size = [], 0
            while size <= MAX_RESULT_BYTES:
                ready, _, _ = select.select([reply_read], [], [], max(deadline - time.monotonic(), 0))
                if not ready:
                    raise TimeoutError
                chunk = os.read(reply_read, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            os.close(reply_read)  # a child still writing past the cap gets EPIPE
            reply_read = None
            ready, _, _ = select.select([self.control], [], [], max(deadline - time.monotonic(), 0))
            ending = _recv_exact(self.control, _ENDING.size) if ready else b""
            if len(ending) != _ENDING.size:
                raise TimeoutError
        except (OSError, ValueError, TimeoutError):
            self.close(kill=True)
            return None
        finally:
            for fd in (request_read, request_write, reply_read, reply_write):
                if fd is not None:
                    os.close(fd)
        timed_out, sig = _ENDING.unpack(ending)
        if size > MAX_RESULT_BYTES:
            return {"status": "runtime_error", "error": "result too large"}
        if timed_out:
            return {"status": "timeout", "error": f"no result within {timeout:g} s"}
        if sig == signal.SIGXCPU:
            return {"status": "timeout", "error": "CPU time limit"}
        if sig and not chunks:
            return {"status": "runtime_error", "error": f"killed by signal {sig}"}
        return parse_reply(b"".join(chunks), RUN_STATUSES)


def _interpreter() -> tuple[str, list]:
    """The interpreter a worker runs, and the folders to put first on its sys.path: this process's
    own, or, where this uid may not run it (a venv whose python is a link into another user's
    home, as after setpriv), the base interpreter running this process with this process's
    site-packages. Either way a fresh interpreter, never a fork."""
    if os.access(sys.executable, os.X_OK):
        return sys.executable, []
    base = os.path.join(sys.base_exec_prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")
    if os.access(base, os.X_OK):
        return base, [path for path in sys.path if path.endswith("site-packages")]
    return sys.executable, []  # the start fails and says why


_BOOT = ("import sys; sys.path[:0] = {paths!r}; "
         "from nbutils.sandbox.code_exec import _worker_main; "
         "_worker_main(allow_uncontained={allow!r}, user={user!r})")


class Sandbox:
    """Worker processes that run untrusted snippets, one jailed child each; `run` is thread-safe
    and runs as many snippets at once as there are workers.

        with Sandbox(timeout=2.0, memory_mb=512) as box:
            box.run("df['a'].sum()", {"df": {"columns": ["a"], "rows": [[1], [2]]}})

    `tables` maps each name the code may use to {"columns": [...], "rows": [[...], ...]}.
    Refuses to start (ContainmentUnavailable) where seccomp cannot contain the children, unless
    `allow_uncontained`; `containment` then names the layers in use (for the run record). Refuses
    to start (RuntimeError, saying why) where this process cannot start a fresh interpreter.

    `user` (a uid; only as root): the workers start as fresh interpreters of this process and drop
    to `user` once pandas is imported, so a process that will drop its own privileges can start
    its sandbox first, from a clean process rather than a fork of its own memory.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                 workers: int = 1, static_check: bool = True, allow_uncontained: bool = False,
                 user: int | None = None):
        if sys.platform == "win32":
            raise OSError("the code sandbox needs fork() and setrlimit(): run on Linux (Kaggle, Colab) or macOS")
        if timeout <= 0 or memory_mb <= 0 or workers < 1:
            raise ValueError(f"timeout, memory_mb and workers must be positive, got {timeout!r}, "
                             f"{memory_mb!r}, {workers!r}")
        self.timeout, self.memory_mb, self.static_check = float(timeout), int(memory_mb), static_check
        self.workers, self.allow_uncontained, self.user = int(workers), allow_uncontained, user
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
                workers = [_Worker(self.allow_uncontained, self.user) for _ in range(self.workers)]
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
        worker = self._idle.get()
        try:
            reply = worker.request({"code": code, "tables": tables}, self.timeout, self.memory_mb,
                                   self.static_check, self.timeout + 30)
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
