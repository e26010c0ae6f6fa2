"""Red team of the text-to-pandas sandbox (issue 14), organised by the six classes of escape and
failure found, run twice: as root (CI runs as root: the children also drop to `nobody`) and as an
ordinary user (uid 4242, where seccomp must hold alone).

Every attack is scored by `ExecutionEvaluator` between honest snippets, two at a time, and each is
judged by its EFFECT, not by its error message: a planted secret file's text and a token in the
environment of a process of the user's never come back in any result or error; a file of the
user's is neither changed nor deleted; no file appears; the token process, the notebook and the
worker pool survive; the listener on localhost accepts nothing; no process is left behind; and
the honest snippets around each attack still score `correct`.

The ordinary-user half: CI runs as root on a clone whose venv python lives under /root (mode
0700), which no other uid can run. So the fixture forks this (already imported) test process,
drops the fork to uid 4242 and runs the battery there; the sandbox's workers are then forked from
that process (`Sandbox(start="auto")` finds it cannot exec the interpreter) instead of exec'ing a
new one. As an ordinary user outside CI the same battery runs with `start="exec"`.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nbutils.tasks.text_to_pandas import code_exec
from nbutils.tasks.text_to_pandas.code_exec import ExecutionEvaluator, Sandbox

SECRET = "SECRET-7f3a9c-planted-in-a-file"
TOKEN = "hf_TOKEN-41d2e8-planted-in-an-environment"
USER_TEXT = "the user's own file, which must survive\n"
USER_UID = 4242
HONEST = "df['points'].sum()"
ANSWER = 73
TABLE = {"df": {"columns": ["name", "team", "points"],
                "rows": [["Ann", "red", 10], ["Bob", "red", 25], ["Cid", "blue", 7], ["Dee", "blue", 31]]}}
# Honest but slow enough to be running while an attack on the other worker tries to kill it.
SLOW_HONEST = "sum(x * 0 for x in range(400000)) + df['points'].sum()"

# The classic walk from a tuple to the real builtins (`B`), for attacks with the static check off.
ESCAPE = ("B = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
          ".__init__.__globals__['__builtins__']\nOS = B['__import__']('os')\n")
# Each payload tries to bring the secret / the token back as its value.
READ_SECRET = "B['open']('SECRET_PATH').read()"

# class -> [(name, code, static_check)]; static_check True means the allowlist must refuse it
# (outcome `forbidden`); with the check off the kernel layers must hold.
ATTACKS: dict[str, list[tuple[str, str, bool]]] = {
    "1 method name built at run time": [
        ("agg('ev'+'al') reaches DataFrame.eval (named)",
         "df.agg('ev' + 'al', expr=\"points.__class__.__init__.__globals__['__builtins__']\")['open']"
         "('SECRET_PATH').read()", True),
        ("join of letters", "df.agg(''.join(['e', 'v', 'a', 'l']), expr='points')", True),
        ("name in a variable", "name = 'eval'\ndf.apply(name, expr='points')", True),
        ("**kwargs hides the name", "df.agg(**{'func': 'eval', 'expr': 'points'})", True),
        ("*args hides the name", "df.agg(*['query'], expr='points > 1')", True),
        ("method kept in a variable", "f = df.agg\nf('eval', expr='points')", True),
        ("pivot_table aggfunc", "df.pivot_table(index='team', values='points', aggfunc='ev' + 'al')", True),
        ("groupby transform by chr", "df.groupby('team').transform(chr(101) + 'val', expr='points')", True),
        ("query with a dunder expression", "df.query(\"points.__class__.__init__.__globals__\")", True),
        ("query with an expression built at run time", "q = 'points' + '.__class__'\ndf.query(q)", True),
        ("eval with an @variable", "x = 1\ndf.eval('@x + points')", True),
        ("query with a dispatching call inside", "df.query(\"points.agg('ev' 'al')\")", True),
        ("unchecked: DataFrame.eval returns the builtins",
         "b = df.eval(\"points.__class__.__init__.__globals__['__builtins__']\")\nb['open']('SECRET_PATH').read()", False),
        ("unchecked: eval returns the builtins, open reads the secret",
         "b = df.agg('ev' + 'al', expr=\"points.__class__.__init__.__globals__['__builtins__']\")\n"
         "b['open']('SECRET_PATH').read()", False),
        ("unchecked: eval returns os, environ of the parent",
         "m = df.agg('ev' + 'al', expr=\"points.__class__.__init__.__globals__['sys'].modules['os']\")\n"
         "m.open('/proc/' + str(m.getppid()) + '/environ', 0)", False),
    ],
    "2 match class patterns": [
        ("class pattern fetches __init__ (named)",
         "match pd.DataFrame:\n    case object(__init__=init):\n        pass\n"
         "match init:\n    case object(__globals__=g):\n        pass\n"
         "g['__builtins__']['open']('SECRET_PATH').read()", True),
        ("mapping pattern", "match {'a': 1}:\n    case {'a': x}:\n        x", True),
        ("keyword pattern reads _mgr", "match df:\n    case pd.DataFrame(_mgr=m):\n        m", True),
        ("guard", "match 1:\n    case x if x:\n        df", True),
        ("unchecked: class pattern walk to open",
         "O = ().__class__.__base__\nmatch pd.DataFrame.sum:\n    case O(__globals__=g):\n        pass\n"
         "g['__builtins__']['open']('SECRET_PATH').read()", False),
        ("unchecked: class pattern to sys.modules os, kill the token process",
         "O = ().__class__.__base__\nmatch pd.DataFrame.sum:\n    case O(__globals__=g):\n        pass\n"
         "g['sys'].modules['os'].kill(TOKEN_PID, 9)", False),
    ],
    "3 format strings": [
        ("format field walks to environ (named)",
         "'{0.__init__.__globals__[sys].modules[os].environ}'.format(pd.DataFrame)", True),
        ("str.format called unbound", "str.format('{0.__class__}', df)", True),
        ("keyword field", "'{x.__init__.__globals__}'.format(x=pd.DataFrame)", True),
        ("nested spec field", "'{0:{1.__class__}}'.format(1, df)", True),
        ("index field", "'{0[0]}'.format(['a'])", True),
        ("format_map", "'{x}'.format_map({'x': 1})", True),
        ("format kept in a variable", "f = '{0.__class__}'.format\nf(df)", True),
        ("f-string dunder", "f'{df.__class__}'", True),
        ("unchecked: format reads the worker's environment",
         "'{0.__init__.__globals__[sys].modules[os].environ}'.format(pd.DataFrame)", False),
    ],
    "4 process limits give way": [
        ("close fds 0-2, then open the secret (named)",
         ESCAPE + "[OS.close(fd) for fd in (0, 1, 2)]\nB['open']('SECRET_PATH').read()", False),
        ("socket to localhost (named)",
         ESCAPE + "s = B['__import__']('socket').socket()\ns.connect(('127.0.0.1', LISTEN_PORT))\n'connected'", False),
        ("socket to localhost through libc",
         ESCAPE + "ct = B['__import__']('ctypes')\nlibc = ct.CDLL(None, use_errno=True)\n"
         "fd = libc.socket(2, 1, 0)\naddress = (2).to_bytes(2, 'little') + (LISTEN_PORT).to_bytes(2, 'big')"
         " + bytes([127, 0, 0, 1]) + bytes(8)\n[fd, libc.connect(fd, address, 16), ct.get_errno()]", False),
        ("forge a reply: status correct (named)",
         ESCAPE + "OS.write(3, b'{\"status\": \"correct\"}')\nOS._exit(0)", False),
        ("kill the snippets running alongside (named)",
         ESCAPE + "OS.kill(-1, 9)\nOS.killpg(0, 9)", False),
        ("kill the worker", ESCAPE + "OS.kill(OS.getppid(), 9)", False),
        ("os.open the secret", ESCAPE + "OS.read(OS.open('SECRET_PATH', 0), 100)", False),
        ("ctypes raw open syscall",
         ESCAPE + "ct = B['__import__']('ctypes')\nlibc = ct.CDLL(None)\n"
         "fd = libc.syscall(257, -100, b'SECRET_PATH', 0)\nbuf = ct.create_string_buffer(100)\n"
         "libc.read(fd, buf, 100)\nbuf.value", False),
        ("raise the rlimits, then open",
         ESCAPE + "r = B['__import__']('resource')\nr.setrlimit(r.RLIMIT_NOFILE, (1024, 1024))\n" + READ_SECRET, False),
        ("execve a shell", ESCAPE + "OS.execv('/bin/sh', ['sh', '-c', 'cat SECRET_PATH > MARKER_PATH'])", False),
        ("ptrace the worker",
         ESCAPE + "ct = B['__import__']('ctypes')\nct.CDLL(None).ptrace(16, OS.getppid(), 0, 0)\n"
         "ct.get_errno()", False),
        ("setuid 0", ESCAPE + "OS.setuid(0)\n" + READ_SECRET, False),
        ("malformed reply: deep nesting", ESCAPE + "OS.write(3, b'[' * 200000)\nOS._exit(0)", False),
        ("malformed reply: not JSON", ESCAPE + "OS.write(3, b'\\xff\\xfe{not json')\nOS._exit(0)", False),
        ("malformed reply: wrong types",
         ESCAPE + "OS.write(3, b'{\"status\": \"ok\", \"value\": {\"kind\": \"frame\", \"columns\": [1], "
         "\"rows\": 5}}')\nOS._exit(0)", False),
        ("malformed reply: 5000-digit integer",
         ESCAPE + "OS.write(3, b'{\"status\": \"ok\", \"value\": {\"kind\": \"scalar\", \"value\": ' + "
         "b'9' * 5000 + b'}}')\nOS._exit(0)", False),
        ("malformed reply: too large", ESCAPE + "OS.write(3, b'\"' + b'x' * 5000000)\nOS._exit(0)", False),
        ("malformed reply: deeply nested cells",
         ESCAPE + "OS.write(3, b'{\"status\": \"ok\", \"value\": {\"kind\": \"list\", \"columns\": null, "
         "\"rows\": [' + b'[' * 50 + b']' * 50 + b']}}')\nOS._exit(0)", False),
        ("reply, then keep running", ESCAPE + "OS.write(3, b'{\"status\": \"ok\"}')\nwhile True:\n    pass", False),
        ("segfault the child", ESCAPE + "B['__import__']('ctypes').string_at(0)", False),
    ],
    "5 honest values that broke the comparison": [],  # see HONEST_EDGE_CASES
    "6 not root: the user's secrets, processes and files": [
        ("read the token from /proc/<notebook>/environ (named)",
         ESCAPE + "B['open']('/proc/TOKEN_PID/environ').read()", False),
        ("read /proc/<ppid>/environ", ESCAPE + "B['open']('/proc/' + str(OS.getppid()) + '/environ').read()", False),
        ("kill the notebook", ESCAPE + "OS.kill(NOTEBOOK_PID, 9)\nOS.kill(TOKEN_PID, 9)", False),
        ("truncate the user's file", ESCAPE + "OS.truncate('USER_PATH', 0)", False),
        ("delete the user's file", ESCAPE + "OS.unlink('USER_PATH')", False),
        ("rename the user's file", ESCAPE + "OS.rename('USER_PATH', 'MARKER_PATH')", False),
        ("chmod the user's file", ESCAPE + "OS.chmod('USER_PATH', 0)", False),
        ("write a new file", ESCAPE + "B['open']('MARKER_PATH', 'w').write('x')", False),
        ("leave a process: fork and sleep",
         ESCAPE + "if OS.fork() == 0:\n    OS.setsid()\n    B['__import__']('time').sleep(60)\n'forked'", False),
        ("leave a process: posix_spawn sleep", ESCAPE + "OS.posix_spawn('/bin/sleep', ['sleep', '60'], {})", False),
        ("leave a process: os.system in background", ESCAPE + "OS.system('sleep 60 &')", False),
        ("mkdir in the user's folder", ESCAPE + "OS.mkdir('MARKER_PATH')", False),
        ("walk the worker's memory for the token (exec-started workers only)",
         ESCAPE + "gc = B['__import__']('gc')\n[v for o in gc.get_objects() if isinstance(o, dict) "
         "for v in list(dict.values(o)) if isinstance(v, str) and v.startswith('hf_' + 'TOKEN')][:3]", False),
        ("pandas writes a file: to_string(path)", "df.to_string('MARKER_PATH')", True),
        ("pandas writes a file: pipe(DataFrame.to_string, path)", "df.pipe(pd.DataFrame.to_string, 'MARKER_PATH')", True),
        ("unchecked: pandas writes a file", "df.to_string(buf='MARKER_PATH')", False),
    ],
}

# (reference, prediction, expected outcome): values that once raised in the comparison or failed
# in the child. The evaluation must score them and go on.
HONEST_EDGE_CASES = [
    ("df['points'].sum()", "10 ** 400", "wrong_result"),  # OverflowError in the comparison (named)
    ("10 ** 400", "10 ** 400", "correct"),
    ("10 ** 400", "10.0 ** 300", "wrong_result"),
    ("df['points'].sum()", "-10 ** 400", "wrong_result"),
    ("df['points'].sum()", "float('nan')", "wrong_result"),
    ("df['points'].sum()", "float('inf')", "wrong_result"),
    ("df['points'].sum()", "[1, [2, [3, [4, [5, [6]]]]]]", "wrong_result"),
    ("df['points'].sum()", "{1: 'a', 'b': [1, 2], (3, 4): None}", "wrong_result"),
    ("df['points'].sum()", "set([1, 'a', 2.5, None])", "wrong_result"),
    ("df['points'].sum()", "pd.DataFrame({'a': [1, 'x', None, 2.5]})", "wrong_result"),
    ("repr(df)", "repr(df)", "correct"),  # a lazy import once failed in the child (named)
    ("df.to_string()", "df.to_string()", "correct"),
    ("result = df[df['points'] > 8]\nprint(result)", "df[df['points'] > 8]", "correct"),
    ("str(df.describe())", "str(df.describe())", "correct"),
    ("df.dtypes", "df.dtypes", "correct"),
    ("f\"{df['points'].mean():.2f}\"", "'{:.2f}'.format(df['points'].mean())", "correct"),
]

# Honest snippets run between the attacks: each must score correct.
HONEST_SNIPPETS = [HONEST, SLOW_HONEST, "df.points.sum()", "result = df['points'].sum()"]


def _fill(code: str, ctx: dict) -> str:
    for key, value in ctx["placeholders"].items():
        code = code.replace(key, str(value))
    return code


def _attack_list(ctx):
    """[(class, name, code, static_check)], the current tests' attacks included."""
    from test_text_to_pandas import ATTACKS as OLD_ATTACKS
    from test_text_to_pandas import PROCESS_LAYER

    attacks = [(cls, name, _fill(code, ctx), checked) for cls, items in ATTACKS.items()
               for name, code, checked in items
               # A worker forked from the caller (start="fork") holds a copy of the caller's
               # memory, secrets included, and a snippet past the allowlist can return what it
               # finds: the kernel cannot tell a stolen string from a result. Only an exec'd
               # worker (the default wherever the interpreter can be run) holds nothing.
               if ctx["start"] == "exec" or "exec-started workers only" not in name]
    marker = ctx["placeholders"]["MARKER_PATH"]
    attacks += [("0 earlier tests", f"earlier: {name}", code.format(marker=marker), True)
                for name, (code, _) in OLD_ATTACKS.items()]
    attacks += [("0 earlier tests", f"earlier, unchecked: {name}", code.format(marker=marker), False)
                for name, (code, _, _) in PROCESS_LAYER.items()]
    return attacks


def _score(sandbox, attacks):
    """Score each attack between honest snippets; returns per-attack rows and honest outcomes."""
    references, predictions, kinds, tables = [], [], [], []
    for i, attack in enumerate(attacks):
        honest = HONEST_SNIPPETS[i % len(HONEST_SNIPPETS)]
        for code, kind in ((honest, "honest"), (attack[2], attack)):
            references.append(HONEST)
            predictions.append(code)
            kinds.append(kind)
            tables.append([TABLE])
    predictions.append(SLOW_HONEST)  # one more after the last attack
    references.append(HONEST)
    kinds.append("honest")
    tables.append([TABLE])
    evaluator = ExecutionEvaluator(references, tables, sandbox)
    report = evaluator.score(predictions)
    rows, honest = [], []
    for kind, outcome, error in zip(kinds, report.outcomes, report.errors):
        if kind == "honest":
            honest.append(outcome)
        else:
            rows.append({"class": kind[0], "name": kind[1], "checked": kind[3], "outcome": outcome,
                         "error": error})
    return rows, honest


def _sessions_alive(sessions: set[int]) -> list[int]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) in sessions and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _replies_seen(sandbox_class):
    """Every reply any sandbox gives during the battery (values and errors), to search for leaks."""
    seen = []
    original = sandbox_class.run

    def spy(self, code, tables):
        result = original(self, code, tables)
        seen.append(json.dumps(result.value) + "\n" + result.error)
        return result
    return seen, original, spy


def run_battery(folder: Path, start: str = "auto") -> dict:
    """Plant a secret, a user's file, a token process and a listener in `folder`, run every attack
    and edge case through the sandbox, and report what happened (as JSON-able values)."""
    secret_path, user_path, marker_path = folder / "secret.txt", folder / "user_file.txt", folder / "escaped"
    secret_path.write_text(SECRET)
    os.chmod(secret_path, 0o600)
    user_path.write_text(USER_TEXT)
    token_process = subprocess.Popen(["/bin/sleep", "300"], env={"HF_TOKEN": TOKEN})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    os.environ["HF_TOKEN"] = TOKEN  # the notebook's own environment: the worker must not keep it
    start = start if start != "auto" else ("exec" if code_exec._can_exec_interpreter() else "fork")
    ctx = {"start": start, "placeholders": {"SECRET_PATH": secret_path, "USER_PATH": user_path, "MARKER_PATH": marker_path,
                            "TOKEN_PID": token_process.pid, "NOTEBOOK_PID": os.getpid(),
                            "LISTEN_PORT": listener.getsockname()[1]}}
    seen, original, spy = _replies_seen(Sandbox)
    Sandbox.run = spy
    sessions, results = set(), {}
    try:
        attacks = _attack_list(ctx)
        for checked in (True, False):
            with Sandbox(timeout=1.0, memory_mb=256, workers=2, static_check=checked, start=start) as box:
                sessions |= {w.process.pid for w in box._all}
                rows, honest = _score(box, [a for a in attacks if a[3] == checked])
                results[f"checked={checked}"] = {"rows": rows, "honest": honest, "restarts": box.restarts,
                                                 "containment": box.containment}
                if checked:
                    refs, preds, expected = zip(*HONEST_EDGE_CASES)
                    report = ExecutionEvaluator(list(refs), [[TABLE]] * len(refs), box).score(list(preds))
                    results["edge_cases"] = {"outcomes": report.outcomes, "expected": list(expected),
                                             "errors": report.errors}
        time.sleep(0.2)
        results["left_behind"] = _sessions_alive(sessions)
    finally:
        Sandbox.run = original
        del os.environ["HF_TOKEN"]
    try:
        listener.accept()
        results["listener_accepted"] = True
    except BlockingIOError:
        results["listener_accepted"] = False
    listener.close()
    results["token_process_alive"] = token_process.poll() is None
    token_process.kill()
    token_process.wait()
    everything = "\n".join(seen)
    results["secret_leaked"] = SECRET in everything
    results["token_leaked"] = TOKEN in everything or TOKEN[3:] in everything
    results["user_file_intact"] = user_path.is_file() and user_path.read_text() == USER_TEXT \
        and (user_path.stat().st_mode & 0o777) != 0
    results["folder"] = sorted(p.name for p in folder.iterdir())
    results["uid"] = os.geteuid()
    results["start"] = start
    return results


def _run_as_user(folder: Path, uid: int) -> dict:
    """Fork this process, drop the fork to `uid` and run the battery there; its report."""
    code_exec.preload()  # while this process can still read the interpreter's files
    import test_text_to_pandas  # noqa: F401 - imported before the drop, for the same reason

    os.chown(folder, uid, uid)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            report = run_battery(folder)
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            report = {"error": f"{type(err).__name__}: {err}"}
        try:
            data = json.dumps(report).encode()
            while data:
                data = data[os.write(write_fd, data):]
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks, deadline = [], time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_fd], [], [], 1.0)
        if ready:
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "no report"}')


@pytest.fixture(scope="module")
def as_root(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the root half runs where the tests run as root (CI)")
    return run_battery(tmp_path_factory.mktemp("redteam-root"))


@pytest.fixture(scope="module")
def as_user():
    import shutil
    import tempfile

    # Not under pytest's own temporary folder: that is private to root (mode 0700).
    folder = Path(tempfile.mkdtemp(prefix="redteam-user-"))
    try:
        if os.geteuid() == 0:
            return _run_as_user(folder, USER_UID)
        return run_battery(folder)  # already an ordinary user
    finally:
        shutil.rmtree(folder, ignore_errors=True)


HALVES = ["as_root", "as_user"]


def _report(request, half):
    report = request.getfixturevalue(half)
    assert "error" not in report, report.get("error")
    return report


CLASSES = [cls for cls in ATTACKS if ATTACKS[cls]] + ["0 earlier tests"]


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("cls", CLASSES)
def test_each_attack_fails_and_the_snippets_around_it_score(request, half, cls):
    report = _report(request, half)
    rows = [row for key in ("checked=True", "checked=False") for row in report[key]["rows"]
            if row["class"] == cls]
    assert len(rows) >= 4 or cls == "0 earlier tests"
    for row in rows:
        assert row["outcome"] != "correct", row
        if row["checked"] and cls[0] in "123":
            assert row["outcome"] == "forbidden", row  # the allowlist refuses these outright
    for key in ("checked=True", "checked=False"):
        assert set(report[key]["honest"]) == {"correct"}, report[key]["honest"]
        assert report[key]["restarts"] == 0  # no attack killed a worker


@pytest.mark.parametrize("half", HALVES)
def test_no_secret_token_file_or_process_escapes(request, half):
    report = _report(request, half)
    assert not report["secret_leaked"] and not report["token_leaked"]
    assert report["user_file_intact"] and report["token_process_alive"]
    assert not report["listener_accepted"]
    assert report["folder"] == ["secret.txt", "user_file.txt"]  # nothing written, renamed, made
    assert report["left_behind"] == []


@pytest.mark.parametrize("half", HALVES)
def test_forged_and_malformed_replies_are_the_snippets_runtime_errors(request, half):
    rows = [row for row in _report(request, half)["checked=False"]["rows"] if "reply" in row["name"]]
    assert len(rows) >= 7
    for row in rows:
        expected = "timeout" if "keep running" in row["name"] else "runtime_error"
        assert row["outcome"] == expected, row


@pytest.mark.parametrize("half", HALVES)
def test_class_5_honest_edge_values_are_scored_and_the_evaluation_goes_on(request, half):
    edge = _report(request, half)["edge_cases"]
    assert edge["outcomes"] == edge["expected"], list(zip(edge["outcomes"], edge["errors"]))


@pytest.mark.parametrize("half", HALVES)
def test_containment_is_named_and_seccomp_holds_for_both(request, half):
    report = _report(request, half)
    containment = report["checked=True"]["containment"]
    assert "seccomp" in containment and "rlimits" in containment
    assert ("uid-drop" in containment) is (report["uid"] == 0)
    assert report["uid"] == (0 if half == "as_root" else (USER_UID if os.geteuid() == 0 else os.geteuid()))
    # As root the workers are fresh interpreters; the dropped uid cannot run this interpreter
    # (CI's lives under /root, mode 0700), so its workers are forks of the imported process.
    assert report["start"] == ("exec" if half == "as_root" or os.geteuid() != 0 else "fork")


def test_the_attacks_are_real(tmp_path):
    """Without the jail, the unchecked payloads do what they say: the red team tests something."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    ctx = {"start": "exec", "placeholders": {"SECRET_PATH": secret, "TOKEN_PID": 0, "USER_PATH": tmp_path / "u",
                            "MARKER_PATH": tmp_path / "m", "NOTEBOOK_PID": 0, "LISTEN_PORT": 0}}
    import pandas as pd

    for cls, name in (("1 method name built at run time", "unchecked: eval returns the builtins, open reads the secret"),
                      ("1 method name built at run time", "unchecked: DataFrame.eval returns the builtins"),
                      ("2 match class patterns", "unchecked: class pattern walk to open"),
                      ("4 process limits give way", "close fds 0-2, then open the secret (named)")):
        code = next(code for n, code, _ in ATTACKS[cls] if n == name)
        namespace = code_exec._namespace({"df": pd.DataFrame(TABLE["df"]["rows"], columns=TABLE["df"]["columns"])})
        compiled = code_exec._compile(_fill(code, ctx).replace("[OS.close(fd) for fd in (0, 1, 2)]\n", ""),
                                      ["df"], static_check=False)
        exec(compiled, namespace)
        assert namespace["__sandbox_result__"] == SECRET, name
    # The memory walk finds a token held by the process it runs in.
    walk = next(code for name, code, _ in ATTACKS["6 not root: the user's secrets, processes and files"]
                if "memory" in name)
    namespace = code_exec._namespace({})
    exec(code_exec._compile(walk, [], static_check=False), namespace)  # noqa: S102 - the test's own payload
    assert TOKEN in namespace["__sandbox_result__"]
    # The format field reads the environment of the process it runs in.
    os.environ["HF_TOKEN"] = TOKEN
    try:
        assert \
            TOKEN in eval(ATTACKS["3 format strings"][-1][1], {"pd": pd})  # noqa: S307 - the test's own code
    finally:
        del os.environ["HF_TOKEN"]


def test_without_seccomp_the_sandbox_refuses_unless_the_user_accepts_the_risk(monkeypatch):
    """Where the kernel cannot contain the children (macOS, no seccomp), nothing runs unless
    `allow_uncontained`; then the containment says what is missing. Simulated by a worker forked
    from this process with a filter that cannot be built."""
    from nbutils.tasks.text_to_pandas import sandbox_jail

    def unavailable():
        raise sandbox_jail.ContainmentUnavailable("seccomp is Linux-only; this is simulated")

    monkeypatch.setattr(code_exec, "build_filter", unavailable)
    with pytest.raises(sandbox_jail.ContainmentUnavailable,
                       match=r"cannot contain generated code here \(seccomp is Linux-only.*allow_uncontained_execution=True"):
        Sandbox(workers=1, start="fork").start()
    with Sandbox(workers=1, start="fork", allow_uncontained=True) as box:
        assert "seccomp" not in box.containment and "rlimits" in box.containment
        assert box.run(HONEST, TABLE).value == {"kind": "scalar", "value": ANSWER}
