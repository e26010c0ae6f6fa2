"""nbutils.parallel.launch: when a notebook launches its own training processes, and what it runs."""

import pytest

from nbutils.parallel import launch


def test_launches_only_for_several_processes_and_never_from_a_launched_one(monkeypatch):
    monkeypatch.delenv(launch.LAUNCHED, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launch.wanted(1)
    assert launch.wanted(2)
    monkeypatch.setenv(launch.LAUNCHED, "1")  # inside a process it started itself
    assert not launch.wanted(2)
    monkeypatch.delenv(launch.LAUNCHED)
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside `accelerate launch` / torchrun
    assert not launch.wanted(2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_num_processes_must_be_a_positive_whole_number(bad):
    with pytest.raises(ValueError, match="num_processes"):
        launch.wanted(bad)


def test_the_notebook_comes_from_the_checkout_or_the_kaggle_wheels_dataset(tmp_path, monkeypatch):
    assert launch.notebook_file("detect_ai_text").parent.name == "notebooks"
    monkeypatch.setenv("NBUTILS_KAGGLE_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no_such_notebook\.ipynb.*make kaggle"):
        launch.notebook_file("no_such_notebook")
    bundled = tmp_path / "input" / "nbutils-wheels" / "notebooks" / "no_such_notebook.ipynb"
    bundled.parent.mkdir(parents=True)
    bundled.write_text("{}")
    assert launch.notebook_file("no_such_notebook") == bundled


def test_the_script_carries_the_injected_parameters(cache, tmp_path):
    from conftest import ROOT

    script = launch.notebook_script(ROOT / "notebooks" / "detect_ai_text.ipynb",
                                    {"project": "p", "epochs": 7, "num_processes": 2}, tmp_path)
    source = script.read_text()
    assert "epochs = 7" in source and "num_processes = 2" in source
    compile(source, str(script), "exec")  # a valid Python script


@pytest.mark.parametrize("environ, name", [
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "launch.log"),
    ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, "launch/rank1.log"),
    # the second machine's first process writes that machine's log
    ({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}, "launch-node1.log"),
])
def test_each_process_writes_its_own_log(tmp_path, monkeypatch, environ, name):
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    log = tmp_path / ("launch-node1.log" if name == "launch-node1.log" else "launch.log")
    assert launch.rank_log(log) == tmp_path / name


def test_the_processes_own_errors_are_read_from_their_logs(tmp_path):
    log = tmp_path / "launch.log"
    log.write_text("training...\n{'loss': 0.69}\n")
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "rank1.log").write_text(
        "training...\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
        "    raise ValueError('boom')\nValueError: boom\n")
    assert launch.rank_logs(log) == [log, tmp_path / "launch" / "rank1.log"]
    assert launch.process_errors(log) == ["rank1.log: ValueError: boom"]
    shown = launch.tails(log, lines=2)
    assert "{'loss': 0.69}" in shown and "ValueError: boom" in shown
    launch.clear_logs(log)
    assert log.read_text() == "" and launch.rank_logs(log) == [log]


def test_a_process_forked_from_a_kernel_displays_into_its_log_not_the_kernel(monkeypatch, capsys):
    """A forked kernel's `display()` (tables, the Trainer's notebook progress) would send kernel
    messages from the fork, which the kernel dumps into the runner's console; after
    `leave_the_kernel` there is no shell: `display()` prints, and transformers sees no notebook."""
    import tqdm.auto
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.auto.tqdm)  # restored after the test
    published = []
    shell = InteractiveShell.instance()
    monkeypatch.setattr(shell.display_pub, "publish", lambda *a, **k: published.append(a))
    try:
        launch.leave_the_kernel()
        assert not InteractiveShell.initialized()
        display({"table": 1})
        from transformers.utils.import_utils import is_in_notebook

        assert not is_in_notebook()
    finally:
        type(shell).clear_instance()
    assert published == [] and "{'table': 1}" in capsys.readouterr().out
    assert getattr(tqdm.auto.tqdm, "_nbutils_final_line", False)


# Launched with `accelerate launch` like a notebook's script (runner.launch_script).
FAILING = """
import torch.distributed as dist
from nbutils.run import runtime
rank = runtime.topology().rank
dist.init_process_group("gloo")
print(f"process {rank} started", flush=True)
if rank == 1:
    raise ValueError("boom on rank 1")
dist.barrier()
"""

# Rank 1 takes a rank-dependent branch and never reaches the collective rank 0 waits in.
HANGING = """
import os, time
import torch.distributed as dist
from nbutils.run import runtime
rank = runtime.topology().rank
dist.init_process_group("gloo")
open(os.path.join(os.path.dirname(__file__), f"pid{rank}"), "w").write(str(os.getpid()))
if rank == 0:
    print("rank 0 waits in a barrier", flush=True)
    dist.barrier()
else:
    print("rank 1 does something else", flush=True)
    time.sleep(3600)
"""


def _launch(tmp_path, source, **options):
    from conftest import ROOT
    from tools import runner

    (tmp_path / "launch").mkdir()
    script = tmp_path / "launch" / "script.py"
    script.write_text(source)
    return runner.launch_script(script, tmp_path / "launch.log", ROOT, 2, **options)


@pytest.mark.slow
def test_a_failed_process_shows_its_own_error_and_every_line_is_written_once(tmp_path, capsys):
    from tools import runner

    with pytest.raises(runner.LaunchError) as failure:
        _launch(tmp_path, FAILING)
    assert str(failure.value).splitlines()[-1] == "rank1.log: ValueError: boom on rank 1"
    main = (tmp_path / "launch.log").read_text()
    assert main.count("process 0 started") == 1 and "process 1" not in main
    assert "process 1 started" in (tmp_path / "launch" / "rank1.log").read_text()
    shown = capsys.readouterr().err  # every process's last lines in the console
    assert f"last lines of {tmp_path / 'launch.log'}" in shown and "Connection closed" in shown
    assert f"last lines of {tmp_path / 'launch' / 'rank1.log'}" in shown and "ValueError: boom on rank 1" in shown


@pytest.mark.slow
def test_processes_waiting_for_each_other_are_stopped_with_each_ones_last_lines(tmp_path, capsys):
    import os
    import time

    from tools import runner

    started = time.monotonic()
    with pytest.raises(runner.LaunchError, match="no process wrote a line for 20 s"):
        _launch(tmp_path, HANGING, stall_after=20)  # the imports before the first line take ~10 s here
    assert time.monotonic() - started < 90
    shown = capsys.readouterr().err
    assert "rank 0 waits in a barrier" in shown and "rank 1 does something else" in shown
    for rank in (0, 1):  # no process is left behind
        pid = int((tmp_path / "launch" / f"pid{rank}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# A process of its own (notebook_launcher refuses a process where accelerate's state exists,
# which an earlier test's Trainer leaves): the notebook's script is this failing one.
FROM_A_NOTEBOOK = """
import sys
from pathlib import Path
from nbutils.parallel import launch

folder = Path(sys.argv[1])
launch.notebook_file = lambda name: folder / f"{name}.ipynb"
launch.notebook_script = lambda notebook, parameters, where: folder / "script.py"
try:
    launch.run_in_processes("detect_ai_text", {"output_dir": str(folder / "run")}, 2)
except RuntimeError as failure:
    print(failure)
"""


@pytest.mark.slow
def test_a_failure_in_processes_launched_from_a_notebook_names_the_processes_error(tmp_path):
    """accelerate's notebook_launcher raises its own ChildFailedError; the notebook shows the
    failed process's error and every process's last lines instead."""
    import os
    import subprocess
    import sys

    (tmp_path / "script.py").write_text(FAILING)
    (tmp_path / "driver.py").write_text(FROM_A_NOTEBOOK)
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the 2 processes failed (" in done.stdout and "rank1.log: ValueError: boom on rank 1" in done.stdout
    assert "process 0 started" in done.stdout and "process 1 started" in done.stdout


def test_a_failed_launched_run_points_to_the_processes_log(tmp_path, capsys):
    """A launched run has no executed notebook: the summary points to its processes' log, not
    to "stopped before the notebook ran"."""
    from tools import runner

    run_dir = tmp_path / "outputs" / "smoke" / "detect_ai_text" / "bert"
    run_dir.mkdir(parents=True)
    (run_dir / "launch.log").write_text("training...\n")
    failed = runner.Result("detect_ai_text/bert", "failed", run_dir / "detect_ai_text.ipynb", 1.0,
                           error="LaunchError: rank1.log: ValueError: boom")
    assert runner.report([failed], "run", "smoke", tmp_path, tmp_path / "outputs") == 1
    err = capsys.readouterr().err
    assert "log of the processes:" in err and "launch.log" in err and "stopped before" not in err
