"""Red team of the text-to-pandas sandbox (issues 14 and 24), organised by the classes of escape and
failure found, run twice: as root (CI runs as root: the children also drop to `nobody`) and as an
ordinary user (uid 4242, where seccomp must hold alone).

Every attack is scored by `ExecutionEvaluator` between honest snippets, two at a time, and each is
judged by its EFFECT, not by its error message: a planted secret file's text and a token in the
environment of a process of the user's never come back in any result or error; a file of the
user's is neither changed nor deleted; no file appears; the token process, the notebook and the
worker pool survive; the listener on localhost accepts nothing; no process is left behind; and
the honest snippets around each attack still score `correct`.

The ordinary-user half: run as root, the fixture starts the sandboxes with `user=4242` (fresh
interpreters that drop to uid 4242 once pandas is imported: a uid that cannot read a venv under
/root could not start them itself), then forks this test process, drops the fork to uid 4242 and
runs the battery there with them: every child runs as 4242, where seccomp must hold alone.
Workers are never forks of the caller (issue 24: a fork holds the caller's memory, secrets and
reference answers included); the same fork also checks that a sandbox it starts itself either
starts a clean worker or refuses and says why. Run as an ordinary user from the start, the same
battery runs as that user.
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

from nbutils.sandbox import code_exec
from nbutils.sandbox.code_exec import ExecutionEvaluator, Sandbox

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
    # Issue 24, class 1: text that pandas splits and tokenizes otherwise than Python's parser does.
    # Each, read as pandas reads it, reaches an underscore attribute (the way to ctypes' pythonapi).
    "7 expression strings pandas reads differently": [
        ("backticks paired across two string literals (named)",
         "df.query(\"name == '`' or points.values.ctypes._ctypes.x == '`'\", engine='python')", True),
        ("backticks across literals in eval", "df.eval(\"a = '`' + points.values.ctypes._ctypes.x + '`'\", engine='python')", True),
        ("backticks around an attribute walk", "df.eval('`points.values.ctypes._ctypes`')", True),
        ("\\x1c ends a line for pandas, not for Python (named)",
         "df.eval('a = points #\\x1cb = points.values.ctypes._ctypes', engine='python')", True),
        ("\\u2028 line separator", "df.eval('a = points #\\u2028b = points.values.ctypes._ctypes', engine='python')", True),
        ("\\u2029 paragraph separator", "df.eval('a = points #\\u2029b = points.values.ctypes._ctypes', engine='python')", True),
        ("\\x85 next line", "df.eval('a = points #\\x85b = points.values.ctypes._ctypes', engine='python')", True),
        ("\\x0b and \\x0c", "df.eval('a = points #\\x0bb = points #\\x0cc = points.values.ctypes._ctypes', engine='python')", True),
        ("\\x1d and \\x1e", "df.eval('a = points #\\x1db = points #\\x1ec = points.values.ctypes._ctypes', engine='python')", True),
        ("a separator without a comment", "df.eval('a = points\\x1cb = points.values.ctypes._ctypes', engine='python')", True),
        ("\\r alone", "df.eval('a = points\\rb = points.values.ctypes._ctypes', engine='python')", True),
        ("dunders as escapes in a bytes literal (named)",
         "df.eval('a = points #\\x1cb = points.values.ctypes._ctypes.pythonapi.PyRun_SimpleString(b\"\\\\x5f\\\\x5fimport\\\\x5f\\\\x5f\")', engine='python')", True),
        ("a single-underscore attribute outside any string (named)", "df.points.values.ctypes._ctypes", True),
        ("a single-underscore attribute in a query", "df.query('points._values > 1')", True),
        ("an @local reaches a variable", "x = df\ndf.query('points > @x.points.min()')", True),
        ("a call inside the expression", "df.eval('points.abs()')", True),
        ("an underscore name", "df.eval('_points + 1')", True),
        ("resolvers handed to pandas", "df.query('points > 1', resolvers=[{'points': 1}])", True),
    ],
    # Issue 24, class 2: a child finds an earlier request (a reference, another snippet) or the
    # caller's secrets in the memory it was forked with. The references of this class compute
    # REFERENCE_MARK; a prediction that finds the reference's result in memory and returns it
    # would score `correct`. (With the static check off: each assumes the allowlist was passed.)
    "8 a child reads another request's memory": [
        ("gc walk for a reference's result (named)",
         ESCAPE + "gc = B['__import__']('gc')\n[v for o in gc.get_objects() if isinstance(o, (dict, list, tuple)) "
         "for v in (list(dict.values(o)) if isinstance(o, dict) else list(o)) "
         "if isinstance(v, str) and v.startswith('REFVAL' + '-')][:1][0]", False),
        ("scan the heap around a fresh object for a result (named)", ESCAPE + "MEMSCAN(B['id'](B['object']()))", False),
        ("scan the heap around pandas' classes", ESCAPE + "MEMSCAN(B['id'](B['__import__']('pandas').DataFrame))", False),
        ("scan the stack around the environment block",
         ESCAPE + "ct = B['__import__']('ctypes')\nMEMSCAN(ct.c_void_p.in_dll(ct.CDLL(None), 'environ').value)", False),
        ("every module's globals", ESCAPE + "[v for m in list(B['__import__']('sys').modules.values()) "
         "for v in list(B['getattr'](m, '__dict__', {}).values()) if isinstance(v, str) "
         "and v.startswith('REFVAL' + '-')][:1][0]", False),
        ("the environment block of the stack: the caller's token",
         ESCAPE + "ct = B['__import__']('ctypes')\nenv = ct.POINTER(ct.c_char_p).in_dll(ct.CDLL(None), 'environ')\n"
         "[e for e in B['__import__']('itertools').takewhile(lambda e: e is not None, (env[i] for i in range(500))) "
         "if b'TOKEN' in e]", False),
    ],
    # Issue 24, class 4: the check itself made to work hard. Each must end fast, refused or failed,
    # without holding or growing the worker (the check runs in the jailed child, under the cap).
    "10 an unbounded check": [
        ("1.3 MB of nested calls (named)", "df.apply(lambda x: x, args=(" * 40000 + "1" + ",))" * 40000, True),
        ("a 4 MB flat list (named)", "[" + "1," * 2_000_000 + "]", True),
        ("dispatching calls 190 deep around 13 kB of options (the old check re-walked them at each level)",
         "df.apply(len, raw=" * 190 + "[" + "1," * 6000 + "]" + ")" * 190, True),
        ("16 kB of parentheses", "(" * 7000 + "1" + ")" * 7000, True),
        ("just under the cap: a long chain", "df" + ".T" * 7900, True),
        ("just under the cap: many query strings", "\n".join(["r = df.query('points > 1 and points < 99')"] * 330) + "\nr", True),
    ],
    # Issue 24: `newfstatat` was allowed. Each returns the right answer only if the kernel let a
    # stat of the secret file through.
    "13 stat a path": [
        ("os.stat (named)", ESCAPE + "OS.stat('SECRET_PATH')\n73", False),
        ("os.lstat", ESCAPE + "OS.lstat('SECRET_PATH')\n73", False),
        ("os.path.exists", ESCAPE + "73 if OS.path.exists('SECRET_PATH') else 0", False),
        ("os.access", ESCAPE + "73 if OS.access('SECRET_PATH', 0) else 0", False),
        ("raw newfstatat through libc",
         ESCAPE + "ct = B['__import__']('ctypes')\nbuf = ct.create_string_buffer(256)\n"
         "73 if ct.CDLL(None).syscall(262, -100, b'SECRET_PATH', buf, 0) == 0 else 0", False),
        ("raw statx through libc",
         ESCAPE + "ct = B['__import__']('ctypes')\nbuf = ct.create_string_buffer(512)\n"
         "73 if ct.CDLL(None).syscall(332, -100, b'SECRET_PATH', 0, 0x7ff, buf) == 0 else 0", False),
        ("fstat of the reply pipe", ESCAPE + "OS.fstat(3)\n73", False),
    ],
}

# Issue 24, class 2: the references of class 8 compute this, so that a prediction that finds it
# in memory scores `correct`.
REFERENCE_MARK = "'REFVAL-' + str(df['points'].sum() * 7919)"
# Scan memory around an address (`span` bytes each way) for a reference's result: madvise(2), which
# the jail allows, tells mapped pages (0) from unmapped ones (ENOMEM), so the scan reads only pages
# that exist.
MEMSCAN = ("(lambda start, span=4 << 20, ct=B['__import__']('ctypes'): (lambda libc: B['next']((page[i:i + 13].decode() "
           "for a in range((start & ~4095) - span, (start & ~4095) + span, 4096) "
           "if libc.madvise(ct.c_void_p(a), 4096, 0) == 0 for page in [ct.string_at(a, 4096)] "
           "for i in [page.find(b'REFVAL' + b'-')] if i >= 0 and page[i + 7:i + 8].isdigit()), "
           "'nothing found'))(ct.CDLL(None)))")

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

# Issue 24, class 3: wrong answers that a truncating comparison scored `correct` (named: a dict
# with its last values changed, a string with text past 10,000 characters), and values with no
# comparable form. Each pair differs only where the old comparison stopped looking.
TRUNCATION_CASES = [
    ("{i: 'x' * 30 for i in range(20)}", "{**{i: 'x' * 30 for i in range(20)}, 19: 'y'}", "wrong_result"),  # named
    ("'a' * 10000", "'a' * 10000 + 'b'", "wrong_result"),  # named
    ("df.to_dict()", "{**df.to_dict(), 'points': {0: 10, 1: 25, 2: 7, 3: 32}}", "wrong_result"),
    ("list(range(1500))", "list(range(1499)) + [0]", "wrong_result"),
    ("[[[[[1, 2, 3]]]]]", "[[[[[1, 2, 4]]]]]", "wrong_result"),
    ("set(range(2000))", "set(range(1999)) | {5000}", "wrong_result"),
    ("{'a': [1, 2, 3]}", "{'a': [1, 2, 4]}", "wrong_result"),
    ("pd.Series([{'k': 'v' * 300, 'n': 1}])", "pd.Series([{'k': 'v' * 300, 'n': 2}])", "wrong_result"),
    ("{'a': 1, 'b': 2}", "{'b': 2, 'a': 1}", "correct"),  # compared by value, in any order
    ("'a' * 20000", "'a' * 20000", "correct"),
    ("df.groupby('team')", "df.groupby('team')", "reference_error"),  # no comparable form: never compared
    ("df['points'].sum()", "df.groupby('team')", "runtime_error"),
    ("df['points'].sum()", "'x' * 5_000_000", "runtime_error"),  # result too large, not a prefix
]

# Issue 24, class 5: honest pandas the allowlist refused (named: PandasEval's), and their family.
HONEST_IDIOMS = [
    ("df[['points']]", "df.select_dtypes(include=['number'])"),  # named
    ("df[['name', 'team']]", "df.select_dtypes(exclude=['number'])"),
    ("df['team']", "df.team"),  # a column read as an attribute (named)
    ("df.assign(points=df['points'] * 2)", "df.points = df.points * 2\ndf"),  # assigned by attribute (named)
    ("df['points'].iloc[0]", "row = df.loc[0]\nrow.points = 99\ndf.loc[0, 'points']"),  # .loc[0].col = (named)
    ("df['points'] + 1", "def plus_one(x):\n    return x + 1\ndf['points'].apply(plus_one)"),  # named
    ("df['name'].str.upper()", "def shout(s):\n    'upper case'\n    return s.upper()\ndf['name'].map(shout)"),
    ("df.groupby('team')['points'].agg(lambda s: s.max() - s.min())",
     "def spread(s):\n    return s.max() - s.min()\ndf.groupby('team')['points'].agg(spread)"),
    ("df[df['points'] > 9]", "df.query('`points` > 9')"),
    ("df[(df['points'] > 9) & (df['team'] == 'red')]", "df.query(\"points > 9 and team == 'red'\")"),
    ("df[df['team'].isin(['red'])]", "df.query(\"team in ['red']\")"),
    ("df['points'] * 2 + 1", "df.eval('points * 2 + 1')"),
]

# Issue 24: a name that does not exist (the usual mistake of a nearest-neighbour answer: another
# question's table) is Python's NameError, a runtime error, not code refused as unsafe.
UNKNOWN_NAMES = ["people['points'].sum()", "employees.head()", "df2.points", "undefined_function(df)",
                 "total + 1", "Series([1])"]

# Honest snippets run between the attacks: each must score correct.
HONEST_SNIPPETS = [HONEST, SLOW_HONEST, "df.points.sum()", "result = df['points'].sum()"]


def _fill(code: str, ctx: dict) -> str:
    code = code.replace("MEMSCAN", MEMSCAN)
    for key, value in ctx["placeholders"].items():
        code = code.replace(key, str(value))
    return code


def _attack_list(ctx):
    """[(class, name, code, static_check)], the current tests' attacks included."""
    from test_text_to_pandas import ATTACKS as OLD_ATTACKS
    from test_text_to_pandas import PROCESS_LAYER

    attacks = [(cls, name, _fill(code, ctx), checked) for cls, items in ATTACKS.items()
               for name, code, checked in items]
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
            references.append(REFERENCE_MARK if kind != "honest" and attack[0].startswith("8 ") else HONEST)
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
    """Every reply any sandbox gives during the battery (values and errors), to search for leaks,
    and how long each snippet took, by its code."""
    seen, seconds = [], {}
    original = sandbox_class.run

    def spy(self, code, tables):
        start = time.monotonic()
        result = original(self, code, tables)
        seconds[code] = max(seconds.get(code, 0.0), time.monotonic() - start)
        seen.append(json.dumps(result.value) + "\n" + result.error)
        return result
    return seen, seconds, original, spy


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_battery(folder: Path, boxes: dict | None = None) -> dict:
    """Plant a secret, a user's file, a token process and a listener in `folder`, run every attack
    and edge case through the sandbox (`boxes`: {static_check: a started Sandbox}, else started
    here), and report what happened (as JSON-able values)."""
    import contextlib

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
    ctx = {"placeholders": {"SECRET_PATH": secret_path, "USER_PATH": user_path, "MARKER_PATH": marker_path,
                            "TOKEN_PID": token_process.pid, "NOTEBOOK_PID": os.getpid(),
                            "LISTEN_PORT": listener.getsockname()[1]}}
    seen, seconds, original, spy = _replies_seen(Sandbox)
    Sandbox.run = spy
    sessions, results = set(), {}
    try:
        attacks = _attack_list(ctx)
        for checked in (True, False):
            with (contextlib.nullcontext(boxes[checked]) if boxes else
                  Sandbox(timeout=1.0, memory_mb=256, workers=2, static_check=checked)) as box:
                sessions |= {w.process.pid for w in box._all}
                results["worker_command_lines"] = [Path(f"/proc/{w.process.pid}/cmdline").read_text().split("\0")[:2]
                                                   for w in box._all]
                rss_before = [_rss_kb(w.process.pid) for w in box._all]
                rows, honest = _score(box, [a for a in attacks if a[3] == checked])
                for row in rows:
                    code = next(a[2] for a in attacks if a[1] == row["name"])
                    row["seconds"] = round(seconds.get(code, 0.0), 3)
                results[f"checked={checked}"] = {"rows": rows, "honest": honest, "restarts": box.restarts,
                                                 "containment": box.containment,
                                                 "worker_rss_growth_kb": max(_rss_kb(w.process.pid) - before for w, before
                                                                             in zip(box._all, rss_before))}
                if checked:
                    for key, cases in (("edge_cases", HONEST_EDGE_CASES), ("truncation", TRUNCATION_CASES),
                                       ("idioms", [(r, p, "correct") for r, p in HONEST_IDIOMS]),
                                       ("unknown_names", [(HONEST, p, "runtime_error") for p in UNKNOWN_NAMES])):
                        refs, preds, expected = zip(*cases)
                        report = ExecutionEvaluator(list(refs), [[TABLE]] * len(refs), box).score(list(preds))
                        results[key] = {"outcomes": report.outcomes, "expected": list(expected),
                                        "errors": report.errors}
        time.sleep(0.2)
        workers = {w.process.pid for box in (boxes or {}).values() for w in box._all}  # still serving
        results["left_behind"] = [pid for pid in _sessions_alive(sessions) if pid not in workers]
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
    return results


def _run_as_user(folder: Path, uid: int) -> dict:
    """Start the sandboxes for `uid`, fork this process, drop the fork to `uid` and run the battery
    there; its report, with `own_start`: what a sandbox the dropped process starts itself does."""
    import test_text_to_pandas  # noqa: F401 - imported before the drop: the uid may not read it

    boxes = {checked: Sandbox(timeout=1.0, memory_mb=256, workers=2, static_check=checked, user=uid).start()
             for checked in (True, False)}

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
            report = run_battery(folder, boxes)
            try:
                Sandbox(workers=1).start().close()
                report["own_start"] = "started"
            except RuntimeError as err:
                report["own_start"] = str(err)
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
    for box in boxes.values():
        box.close()
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
# Classes whose checked attacks the allowlist refuses outright.
REFUSED_CLASSES = {"1", "2", "3", "7"}


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("cls", CLASSES)
def test_each_attack_fails_and_the_snippets_around_it_score(request, half, cls):
    report = _report(request, half)
    rows = [row for key in ("checked=True", "checked=False") for row in report[key]["rows"]
            if row["class"] == cls]
    assert len(rows) >= (4 if cls.split()[0] in "1 2 3 4 6" else 5) or cls == "0 earlier tests"
    for row in rows:
        assert row["outcome"] != "correct", row
        if row["checked"] and cls.split()[0] in REFUSED_CLASSES:
            assert row["outcome"] == "forbidden", row
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
@pytest.mark.parametrize("key", ["edge_cases", "truncation", "idioms", "unknown_names"])
def test_honest_values_idioms_and_wrong_answers_are_scored_as_they_are(request, half, key):
    """Class 5 (values that broke the comparison), issue 24's class 3 (wrong answers a truncating
    comparison scored correct), class 5 (honest pandas the allowlist refused) and unknown names
    (a NameError, not `forbidden`)."""
    cases = _report(request, half)[key]
    assert len(cases["expected"]) >= 5
    assert cases["outcomes"] == cases["expected"], list(zip(cases["outcomes"], cases["errors"]))
    if key == "unknown_names":
        assert all(error.startswith("NameError") for error in cases["errors"]), cases["errors"]


@pytest.mark.parametrize("half", HALVES)
def test_the_check_is_bounded_in_time_and_in_the_workers_memory(request, half):
    """Issue 24, class 4: a 1.3 MB or 4 MB snippet once held a worker 20-36 s and grew it to 2 GB.
    Now the size cap refuses them before parsing, and what is parsed is parsed in the jailed
    child: each ends within a few seconds (timeout 1 s, on a loaded machine), no worker grows."""
    report = _report(request, half)
    rows = [row for row in report["checked=True"]["rows"] if row["class"] == "10 an unbounded check"]
    assert len(rows) >= 5
    for row in rows:
        assert row["seconds"] < 5, row
        if "MB" in row["name"]:
            assert row["outcome"] == "forbidden" and "characters" in row["error"], row
    assert report["checked=True"]["worker_rss_growth_kb"] < 64 * 1024


@pytest.mark.parametrize("half", HALVES)
def test_containment_is_named_and_seccomp_holds_for_both(request, half):
    report = _report(request, half)
    containment = report["checked=True"]["containment"]
    assert "seccomp" in containment and "rlimits" in containment
    assert ("uid-drop" in containment) is (report["uid"] == 0)
    assert report["uid"] == (0 if half == "as_root" else (USER_UID if os.geteuid() == 0 else os.geteuid()))
    # Workers are fresh interpreters (`python -I`), never forks of the caller.
    assert all(line[1] == "-I" for line in report["worker_command_lines"]), report["worker_command_lines"]


def test_a_process_that_cannot_start_a_clean_worker_is_refused_not_forked(request):
    """The dropped test process starts a sandbox itself: where uid 4242 can run this interpreter it
    gets a fresh one; where it cannot (here: a python under /root, mode 0700), the sandbox refuses
    and says why (issue 24: it used to fork the caller instead)."""
    if os.geteuid() != 0:
        report = {"own_start": "started"}  # this process started the battery's workers itself
    else:
        report = _report(request, "as_user")
    if report["own_start"] != "started":
        assert "could not start a clean worker" in report["own_start"], report["own_start"]
        assert "does not fork this process" in report["own_start"]
        assert f"as uid {USER_UID}" in report["own_start"]


def test_the_attacks_are_real(tmp_path):
    """Without the jail, the unchecked payloads do what they say: the red team tests something."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    ctx = {"placeholders": {"SECRET_PATH": secret, "TOKEN_PID": 0, "USER_PATH": tmp_path / "u",
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
    # The memory scan finds a reference's result held by the process it runs in.
    held = "REFVAL-" + str(ANSWER * 7919)
    namespace = {**code_exec._namespace({}), "held": held}
    scan = ESCAPE + "MEMSCAN(B['id'](held), 1 << 16)"
    exec(code_exec._compile(_fill(scan, ctx), [], static_check=False), namespace)  # noqa: S102
    assert namespace["__sandbox_result__"] == held
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
    `allow_uncontained`; then the containment says what is missing."""
    from nbutils.sandbox import jail as sandbox_jail

    # The worker is a fresh interpreter: it boots with a filter that cannot be built.
    monkeypatch.setattr(code_exec, "_BOOT", (
        "import sys; sys.path[:0] = {paths!r}\n"
        "from nbutils.sandbox import code_exec, jail as sandbox_jail\n"
        "def unavailable():\n    raise sandbox_jail.ContainmentUnavailable('seccomp is Linux-only; this is simulated')\n"
        "code_exec.build_filter = unavailable\ncode_exec._worker_main(allow_uncontained={allow!r})"))
    with pytest.raises(sandbox_jail.ContainmentUnavailable,
                       match=r"cannot contain generated code here \(seccomp is Linux-only.*allow_uncontained_execution=True"):
        Sandbox(workers=1).start()
    with Sandbox(workers=1, allow_uncontained=True) as box:
        assert "seccomp" not in box.containment and "rlimits" in box.containment
        assert box.run(HONEST, TABLE).value == {"kind": "scalar", "value": ANSWER}
