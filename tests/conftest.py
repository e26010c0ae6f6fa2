"""Shared fixtures: the repository root, the built sample data and tiny models, smoke runs."""

from __future__ import annotations

import ast
import inspect
import os
import sys
import textwrap
from pathlib import Path

import pytest

# Offline by construction: a hub lookup must fail at once, never hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

# In pytest-xdist workers: each worker (and the kernels and processes its tests start) gets its
# share of the cores; see runner.share_cores. Set before any test module imports torch.
from tools.runner import share_cores  # noqa: E402

share_cores(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))

ROOT = Path(__file__).resolve().parent.parent
# Every process a test starts (launched training processes, workers, the GPU check's tiny run)
# imports the repository (`tests.fixtures`, `tools`) and has FSDP over CPUs switched on by its
# fixture, as the runner gives the smoke profile's processes (tests/fixtures/fsdp_on_cpu).
os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
    [str(ROOT / "tests" / "fixtures" / "fsdp_on_cpu"), str(ROOT),
     *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]))

# Every session smoke run sees this fake hub token in its environment, as a user's real one
# would be; tests/notebooks/test_secrets.py then scans all their output files for it.
FAKE_TOKEN = "hf_FAKEsmokeTOKEN0123456789notreal"


def flat(value, prefix: str = "") -> dict:
    """A record's nested fields as {"intervals.roc_auc.low": 0.98, ...}: what `pytest.approx`
    compares (numbers within its tolerance, anything else exactly), since it takes no nesting."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {prefix: value}
    out = {}
    for key, inner in items:
        out.update(flat(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


def run_smoke_project(name: str, outputs: Path, **overrides):
    """Run one smoke project through the real runner (in-process) into `outputs`."""
    from tools import runner

    project = runner.select(runner.discover(ROOT, "smoke"), [name])[0]
    return runner.run_project(project, "smoke", ROOT, outputs, overrides)


def kill_run(process) -> None:
    """A real interrupt, at once: SIGKILL a runner process and every process under it.

    The kernel that papermill starts sits in a process group of its own; killing only the
    runner's group left it training for up to a second (until it noticed its parent was gone),
    long enough on a tiny model to pass the checkpoint a test meant to interrupt. So the kernel
    is killed first, then the runner.
    """
    import signal

    import psutil

    runner_process = psutil.Process(process.pid)
    for child in [*runner_process.children(recursive=True), runner_process]:
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait()


def interrupt_smoke_run(name: str, outputs: Path, until=None, waiting_for: str = "its first checkpoint",
                        poll: float = 0.1, overrides: dict | None = None) -> Path:
    """Start project `name`'s smoke run through the runner's command line (into `outputs`, with
    `overrides` of its parameters), wait until `until()` holds (by default: a complete checkpoint
    in the run's `checkpoints` folder), then kill it at once with `kill_run`: a real interrupt, as
    when a Kaggle or Colab session disappears. Returns the folder the killed run worked in
    (`<run folder>.incomplete`, see nbutils.run.setup), where its checkpoints are; a rerun that
    finishes publishes it as `outputs/smoke/<name>`."""
    import json
    import subprocess
    import sys
    import time

    from nbutils.run import checkpoints
    from nbutils.run.setup import attempt_folder

    run_dir = attempt_folder(outputs / "smoke" / name)
    if until is None:
        def until():
            return bool(checkpoints.complete_checkpoints(run_dir / "checkpoints"))
    command = [sys.executable, "-m", "tools.runner", "run", name, "--profile", "smoke",
               "--root", str(ROOT), "--outputs", str(outputs),
               *[f"-p{key}={json.dumps(value)}" for key, value in (overrides or {}).items()]]  # JSON is YAML
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not until():
        assert process.poll() is None, f"the run ended before {waiting_for}"
        assert time.time() < deadline, f"5 minutes passed without {waiting_for}"
        time.sleep(poll)
    kill_run(process)
    return run_dir


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def cache() -> Path:
    """`.cache/` with the sample data and all tiny models (built once, reused when current)."""
    from tests import fixtures

    return fixtures.build(ROOT / ".cache", quiet=True)


def _shared_folder(tmp_path_factory) -> Path:
    """A folder every worker of this test session sees: with pytest-xdist each worker is a
    session of its own, with its own temporary folder under one common parent."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_smoke_run(notebook: str, shared: Path) -> tuple[int, Path]:
    """Run `notebook`'s smoke projects into `shared`, unless a process of this test session did
    already (a file lock makes the others wait for it, then read its outputs); a notebook that
    reads other runs' outputs runs beside the session runs of the notebook it needs. Returns
    (the runner's exit code, the outputs/smoke folder)."""
    from filelock import FileLock

    from tools import runner

    outputs = shared / f"outputs-{notebook}"
    exit_code, folder = shared / f"outputs-{notebook}.exit-code", shared / f"outputs-{notebook}.folder"
    with FileLock(str(shared / f"outputs-{notebook}.lock")):
        if not exit_code.is_file():
            need = needed_notebook(notebook)
            if need:
                outputs = shared_smoke_run(need, shared)[1].parent
            folder.write_text(str(outputs))
            saved = os.environ.get("HF_TOKEN")
            os.environ["HF_TOKEN"] = FAKE_TOKEN
            try:
                code = runner.main(["run", notebook, "--profile", "smoke", "--root", str(ROOT),
                                    "--outputs", str(outputs)])
            finally:
                if saved is None:
                    os.environ.pop("HF_TOKEN")
                else:
                    os.environ["HF_TOKEN"] = saved
            exit_code.write_text(str(code))
    return int(exit_code.read_text()), Path(folder.read_text()) / "smoke"


@pytest.fixture(scope="session")
def smoke_run(cache, tmp_path_factory):
    """`smoke_run("detect_ai_text")` runs that notebook's smoke projects once per test session
    (once across all pytest-xdist workers, see `shared_smoke_run`) through the real runner;
    returns (exit code, the outputs/smoke folder)."""
    shared = _shared_folder(tmp_path_factory)
    return lambda notebook: shared_smoke_run(notebook, shared)


def needed_notebook(notebook: str) -> str | None:
    """The notebook whose outputs `notebook` reads (its metadata's `nbutils.needs`), if any."""
    from tools import runner

    needs = {need.split("/")[0] for need in runner.notebook_needs(ROOT / "notebooks" / f"{notebook}.ipynb")}
    assert len(needs) <= 1, f"{notebook} needs several notebooks' runs; smoke_run shares only one's folder"
    return next(iter(needs), None)


# --- which tests are slow, and which share a worker -------------------------------------------
#
# `make test-fast` runs `-m "not slow"`; `make test` runs everything in pytest-xdist workers with
# `--dist loadgroup`. A test that reads a session smoke run is marked slow here, whatever its
# author wrote, and joins the group of that notebook, so that one worker runs the notebook once
# and every reader of it. A test that runs notebooks or launches processes by other means
# (run_smoke_project, interrupt_smoke_run, the runner, papermill, subprocesses) carries an
# explicit `@pytest.mark.slow`; tests/harness/test_markers.py checks that none is missing.

# Fixtures that run notebooks: a test using one (directly or through another fixture) is slow.
NOTEBOOK_FIXTURES = {"smoke_run"}
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
TESTS = Path(__file__).resolve().parent


def _test_functions(item) -> list:
    """The test function and the fixtures of tests/ it uses, directly or through others."""
    functions = [item.function]
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        for definition in definitions:
            source = inspect.getsourcefile(definition.func) or ""
            if Path(source).resolve().is_relative_to(TESTS):
                functions.append(definition.func)
    return functions


def _notebook_of(text) -> str | None:
    if isinstance(text, str) and text.split("/")[0] in NOTEBOOKS:
        return text.split("/")[0]
    return None


def smoke_notebook(item) -> str | None:
    """The notebook whose session smoke run `item` reads: the argument of its `smoke_run(...)`
    call (a literal, a module constant or a test parameter), else the one notebook or project
    name its code names."""
    params = dict(getattr(getattr(item, "callspec", None), "params", {}))
    named = []
    for function in _test_functions(item):
        namespace = {**vars(sys.modules[function.__module__]), **params}
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "smoke_run"
                    and node.args):
                argument = node.args[0]
                value = (argument.value if isinstance(argument, ast.Constant)
                         else namespace.get(argument.id) if isinstance(argument, ast.Name) else None)
                if _notebook_of(value):
                    return _notebook_of(value)
            elif isinstance(node, ast.Constant):
                named.append(_notebook_of(node.value))
            elif isinstance(node, ast.Name):
                named.append(_notebook_of(namespace.get(node.id)))
    named += [_notebook_of(value) for value in params.values()]
    found = sorted({name for name in named if name})
    return found[0] if len(found) == 1 else None


def _module_scoped_fixtures(module) -> bool:
    """Whether a test module defines fixtures built once per module (and so once per worker
    that runs any of its tests)."""
    return any(getattr(getattr(value, "_fixture_function_marker", None), "scope", None) == "module"
               for value in vars(module).values())


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if NOTEBOOK_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
            notebook = smoke_notebook(item)
            notebook = notebook and (needed_notebook(notebook) or notebook)  # runs beside its need
            group = f"smoke-{notebook}" if notebook else "smoke"
        elif _module_scoped_fixtures(item.module):
            group = item.module.__name__  # its module fixtures, built once
        else:
            continue
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
