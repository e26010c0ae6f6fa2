"""Shared fixtures: the repository root, the built sample data and tiny models, smoke runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline by construction: a hub lookup must fail at once, never hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parent.parent

# Every session smoke run sees this fake hub token in its environment, as a user's real one
# would be; tests/test_secrets.py then scans all their output files for it.
FAKE_TOKEN = "hf_FAKEsmokeTOKEN0123456789notreal"


def run_smoke_project(name: str, outputs: Path, **overrides):
    """Run one smoke project through the real runner (in-process) into `outputs`."""
    from nbutils.harness import runner

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
                        poll: float = 0.1) -> Path:
    """Start project `name`'s smoke run through the runner's command line (into `outputs`), wait
    until `until()` holds (by default: a complete checkpoint in the run's `checkpoints` folder),
    then kill it at once with `kill_run`: a real interrupt, as when a Kaggle or Colab session
    disappears. Returns the run folder."""
    import subprocess
    import sys
    import time

    from nbutils import checkpoints

    run_dir = outputs / "smoke" / name
    if until is None:
        def until():
            return bool(checkpoints.complete_checkpoints(run_dir / "checkpoints"))
    command = [sys.executable, "-m", "nbutils.harness.runner", "run", name, "--profile", "smoke",
               "--root", str(ROOT), "--outputs", str(outputs)]
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
    from nbutils.harness import fixtures

    return fixtures.build(ROOT / ".cache", quiet=True)


@pytest.fixture(scope="session")
def smoke_run(cache, tmp_path_factory):
    """`smoke_run("detect_ai_text")` runs that notebook's smoke projects once per session
    through the real runner; returns (exit code, the outputs/smoke folder)."""
    from nbutils.harness import runner

    done: dict[str, tuple[int, Path]] = {}

    def run(notebook: str) -> tuple[int, Path]:
        if notebook not in done:
            outputs = tmp_path_factory.mktemp(f"outputs-{notebook}")
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
            done[notebook] = (code, outputs / "smoke")
        return done[notebook]

    return run
