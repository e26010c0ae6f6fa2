"""The fast lane stays fast: every test that runs a notebook or launches processes is marked
`slow` (`make test-fast` runs `-m "not slow"`), and the tests that read one session smoke run
share a pytest-xdist group (`make test` runs `--dist loadgroup`), so the notebook runs once."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT, needed_notebook, smoke_notebook

TESTS = ROOT / "tests"

# Calls that run a notebook or start processes. A test that makes one (itself, through a module
# function, or through one of its module's fixtures) must carry `@pytest.mark.slow`, or read a
# session smoke run (conftest marks those itself).
NOTEBOOK_CALLS = {"run_smoke_project", "interrupt_smoke_run", "run_project", "execute_notebook",
                  "launch_processes", "launch_script", "notebook_launcher", "Popen"}
MODULE_CALLS = {("runner", "main"), ("subprocess", "run"), ("subprocess", "Popen"),
                ("subprocess", "check_call"), ("subprocess", "check_output")}
AUTO_MARKED_FIXTURES = {"smoke_run"}


def _is_slow_mark(node) -> bool:
    return ast.unparse(node).replace(" ", "") in {"pytest.mark.slow", "slow"}


def unmarked_notebook_tests(source: str) -> list[str]:
    """The test functions of a module's `source` that run notebooks or launch processes without
    a `slow` mark."""
    tree = ast.parse(source)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    marked_module = any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
                        and "mark.slow" in ast.unparse(node.value) for node in tree.body)

    def calls_notebooks(name: str, seen: set) -> bool:
        if name in seen or name not in functions:
            return False
        seen.add(name)
        function = functions[name]
        if any(calls_notebooks(arg.arg, seen) for arg in function.args.args):  # its fixtures
            return True
        for node in ast.walk(function):
            if not isinstance(node, ast.Call):
                continue
            called = node.func
            if isinstance(called, ast.Name) and (called.id in NOTEBOOK_CALLS or calls_notebooks(called.id, seen)):
                return True
            if isinstance(called, ast.Attribute) and (
                    called.attr in NOTEBOOK_CALLS
                    or (isinstance(called.value, ast.Name) and (called.value.id, called.attr) in MODULE_CALLS)):
                return True
        return False

    def reads_session_run(name: str, seen: set) -> bool:
        if name in AUTO_MARKED_FIXTURES:
            return True
        if name in seen or name not in functions:
            return False
        seen.add(name)
        return any(reads_session_run(arg.arg, seen) for arg in functions[name].args.args)

    return [name for name, function in functions.items()
            if name.startswith("test") and calls_notebooks(name, set())
            and not (marked_module or any(_is_slow_mark(d) for d in function.decorator_list)
                     or reads_session_run(name, set()))]


def test_every_test_that_runs_notebooks_or_processes_is_marked_slow():
    unmarked = [f"{path.relative_to(ROOT)}::{name}" for path in sorted(TESTS.rglob("test_*.py"))
                for name in unmarked_notebook_tests(path.read_text())]
    assert not unmarked, "mark these @pytest.mark.slow (they run notebooks or launch processes): " \
                         + ", ".join(unmarked)


def test_the_check_finds_an_unmarked_notebook_run_however_it_is_reached():
    source = '''
import pytest
from conftest import run_smoke_project

def _run(tmp_path):
    return run_smoke_project("text_to_pandas", tmp_path)

@pytest.fixture(scope="module")
def launched():
    import subprocess
    return subprocess.run(["true"])

def test_direct(tmp_path):
    run_smoke_project("text_to_pandas", tmp_path)

def test_through_a_function(tmp_path):
    _run(tmp_path)

def test_through_a_fixture(launched):
    pass

def test_through_the_runner(tmp_path):
    runner.main(["run-all"])

@pytest.mark.slow
def test_marked(tmp_path):
    _run(tmp_path)

def test_reads_the_session_run(smoke_run):
    smoke_run("text_to_pandas")

def test_a_unit():
    assert 1 + 1 == 2
'''
    assert unmarked_notebook_tests(source) == ["test_direct", "test_through_a_function",
                                               "test_through_a_fixture", "test_through_the_runner"]
    assert unmarked_notebook_tests("import pytest\npytestmark = pytest.mark.slow\n" + source) == []


def test_readers_of_a_session_smoke_run_are_slow_and_grouped_by_notebook(request):
    readers = [item for item in request.session.items if "smoke_run" in item.fixturenames]
    for item in readers:
        assert item.get_closest_marker("slow"), item.nodeid
        notebook = smoke_notebook(item)
        notebook = notebook and (needed_notebook(notebook) or notebook)
        assert item.get_closest_marker("xdist_group").args[0] == (f"smoke-{notebook}" if notebook else "smoke")


def test_the_users_of_a_module_fixture_share_one_group(request):
    """A module-scoped fixture is built once per worker that runs a test using it: its users must
    share a group, or the fixture (a two-process launch, four full-recipe runs) is built twice."""
    groups: dict[tuple[str, str], set[str]] = {}
    for item in request.session.items:
        for name, definitions in item._fixtureinfo.name2fixturedefs.items():
            if definitions[-1].scope == "module":
                marker = item.get_closest_marker("xdist_group")
                groups.setdefault((item.module.__name__, name), set()).add(marker.args[0] if marker else "")
    split = {f"{module}.{name}": sorted(found) for (module, name), found in groups.items() if len(found) > 1}
    assert not split, f"module fixtures whose users are in several groups: {split}"


class _Item:
    """What `smoke_notebook` reads of a collected test."""

    def __init__(self, function, params=None, fixtures=()):
        self.function = function
        self.callspec = type("CallSpec", (), {"params": params or {}})()
        definitions = {name: [type("Def", (), {"func": f})()] for name, f in fixtures}
        self._fixtureinfo = type("Info", (), {"name2fixturedefs": definitions})()


NOTEBOOK = "summarize_dialogues"


def _literal(smoke_run):
    smoke_run("text_to_pandas")


def _constant(smoke_run):
    smoke_run(NOTEBOOK)


def _parameter(smoke_run, notebook):
    smoke_run(notebook)


def _through_a_helper(smoke_run):
    _helper(smoke_run, "instruction_tune", "instruction_tune/llama2_7b")


def _helper(smoke_run, notebook, project):
    return smoke_run(notebook)


def _fixture(smoke_run):
    return smoke_run("detect_ai_text")


def _reads_the_fixture(runs):
    return runs


@pytest.mark.parametrize("function, params, fixtures, notebook", [
    (_literal, None, (), "text_to_pandas"),
    (_constant, None, (), "summarize_dialogues"),
    (_parameter, {"notebook": "finetuning_strategies"}, (), "finetuning_strategies"),
    (_through_a_helper, None, (), "instruction_tune"),
    (_reads_the_fixture, None, [("runs", _fixture)], "detect_ai_text"),
])
def test_the_group_is_the_notebook_the_test_reads(function, params, fixtures, notebook):
    assert smoke_notebook(_Item(function, params, fixtures)) == notebook


def test_a_smoke_run_runs_once_for_all_workers_and_beside_the_runs_it_needs(tmp_path, monkeypatch):
    """Two workers (threads here) ask for the ensemble's session run at once: the detection
    notebook it needs runs once, then the ensemble once, into the detection run's folder."""
    import threading

    import conftest
    from tools import runner

    calls = []

    def fake_main(argv):
        calls.append((argv[1], argv[argv.index("--outputs") + 1]))
        (Path(argv[argv.index("--outputs") + 1]) / "smoke" / argv[1]).mkdir(parents=True)
        return 0

    monkeypatch.setattr(runner, "main", fake_main)
    answers = []
    workers = [threading.Thread(target=lambda: answers.append(conftest.shared_smoke_run("detect_ensemble", tmp_path)))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    detection = str(tmp_path / "outputs-detect_ai_text")
    assert calls == [("detect_ai_text", detection), ("detect_ensemble", detection)]
    assert answers == [(0, tmp_path / "outputs-detect_ai_text" / "smoke")] * 2
    assert conftest.shared_smoke_run("detect_ai_text", tmp_path) == answers[0] and len(calls) == 2


@pytest.mark.slow
def test_a_group_runs_on_one_worker_under_make_tests_options(tmp_path):
    """The groups above only help if pytest-xdist honours them. It did not with pytest 9.2.0 and
    pytest-xdist 3.8.0 (xdist writes the group into `item._nodeid`, which pytest 9.2 no longer
    reads): `make test` then ran like `--dist load`, readers of one notebook's smoke run on both
    workers, one of them waiting on the other's run. Here a session of our own, with make test's
    options, runs six tests of one group, and they must all land on one worker."""
    import subprocess
    import sys

    (tmp_path / "test_grouped.py").write_text(
        "import pytest\n"
        "@pytest.mark.xdist_group('together')\n"
        "@pytest.mark.parametrize('n', range(6))\n"
        "def test_one(n):\n"
        "    pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
                           "-v", "-c", "/dev/null", "--rootdir", str(tmp_path), str(tmp_path / "test_grouped.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # pytest-xdist's verbose lines: "[gw0] [ 16%] PASSED test_grouped.py::test_one[0]@together"
    ran = [line.split()[0] for line in done.stdout.splitlines() if "PASSED" in line and line.startswith("[gw")]
    assert len(ran) == 6, done.stdout[-2000:]
    workers = set(ran)
    assert len(workers) == 1, f"one group's tests ran on {sorted(workers)}"
