"""Training in several processes from inside a notebook (Kaggle's two T4s), with Accelerate.

`accelerate.notebook_launcher` forks the notebook's kernel into one process per device. A fork
only works while nothing in the kernel has touched CUDA, and importing the Trainer already
does (it imports bitsandbytes, which queries the GPUs; accelerate refuses to launch once
bitsandbytes is imported). So a notebook launches right after its parameters are checked,
before it imports anything heavy:

    if launch.wanted(num_processes):
        launch.run_in_processes("detect_ai_text", config, num_processes)

Each process runs the same notebook, with these parameters injected and converted to a script
(the same path as `make run ... NPROC=2`, which uses `accelerate launch`): the Trainer joins
them into one DDP run (gloo on a CPU, NCCL on GPUs) and only the main process writes files.
The notebook's own kernel then shows the processes' log, the run record and the plots, and
skips its remaining cells, which the processes have already run.

The notebook file comes from the repository checkout (the editable install of `nbutils`) or,
on Kaggle, from the wheels dataset that `make kaggle` builds (`notebooks/<name>.ipynb` beside
the wheel). The processes run that copy: edits made to the open notebook after the bundle was
built do not reach them, which the launch says.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

from nbutils.run import runtime

LAUNCHED = "NBUTILS_LAUNCHED"  # set in every launched process: it must not launch again


def in_launched_process() -> bool:
    """True inside a process started by `run_in_processes`, `accelerate launch` or torchrun."""
    return os.environ.get(LAUNCHED) == "1" or runtime.processes() > 1


def wanted(num_processes: int) -> bool:
    """Should this kernel launch `num_processes` training processes? Not inside one already."""
    if not isinstance(num_processes, int) or isinstance(num_processes, bool) or num_processes < 1:
        raise ValueError(f"num_processes must be a whole number >= 1, got {num_processes!r}")
    return num_processes > 1 and not in_launched_process()


def notebook_file(name: str) -> Path:
    """The notebook `name` (without .ipynb) for the processes to run; a clear error if absent."""
    checkout = Path(__file__).resolve().parents[2] / "notebooks" / f"{name}.ipynb"
    kaggle_root = os.environ.get("NBUTILS_KAGGLE_ROOT", "/kaggle")
    candidates = [checkout, *map(Path, sorted(glob.glob(f"{kaggle_root}/input/*/notebooks/{name}.ipynb")))]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"num_processes > 1 runs the notebook {name}.ipynb in each process, but no copy was found "
        f"(looked in {', '.join(str(p) for p in candidates[:1])} and {kaggle_root}/input/*/notebooks/). "
        "On Kaggle attach the wheels dataset built by `make kaggle`; elsewhere run from the "
        "repository checkout, or use `make run RUN=<project> NPROC=n`.")


def notebook_script(notebook: Path, parameters: dict, folder: Path) -> Path:
    """The notebook with `parameters` injected by papermill (prepare-only), as a Python script."""
    import nbformat
    import papermill
    from nbconvert import PythonExporter

    folder.mkdir(parents=True, exist_ok=True)
    prepared = folder / f"{notebook.stem}.prepared.ipynb"
    papermill.execute_notebook(str(notebook), str(prepared), parameters=parameters,
                               prepare_only=True, progress_bar=False)
    source, _ = PythonExporter().from_notebook_node(nbformat.read(prepared, as_version=4))
    script = folder / f"{notebook.stem}.py"
    script.write_text(source)
    return script


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def rank_log(log: str | Path) -> Path:
    """Where this launched process writes: `log` itself for the first process of its machine
    (local rank 0, which prints what a one-process run would), else `<log without .log>/rank<R>.log`
    beside the script (`launch/rank1.log`): every line once, and each process's own error
    where it can be read."""
    log = Path(log)
    launch = runtime.topology()
    if launch.local_rank == 0:
        return log
    return log.with_suffix("") / f"rank{launch.rank}.log"


def rank_logs(log: str | Path) -> list[Path]:
    """The logs of a launch's processes on this machine: `log` (local rank 0), then the
    others' by rank."""
    log = Path(log)
    others = sorted(log.with_suffix("").glob("rank*.log"), key=lambda p: int(p.stem[4:]) if p.stem[4:].isdigit() else 0)
    return [log, *others]


def _error_line(text: str) -> str | None:
    """The last exception line of the last traceback in `text` (`ValueError: ...`), or None."""
    if "Traceback (most recent call last):" not in text:
        return None
    block = text.rsplit("Traceback (most recent call last):", 1)[1].splitlines()
    # torch prefixes the traceback of a process in a process group with `[rank<N>]: `
    block = [re.sub(r"^\[rank\d+\]: ", "", line) for line in block]
    # The exception line is the first unindented line after the frames.
    lines = [line for line in block[1:] if line.strip() and not line.startswith((" ", "\t"))]
    return lines[0].strip() if lines else None


def process_errors(log: str | Path) -> list[str]:
    """Each process's own error, `<log name>: <exception line>`, for the processes whose log
    ends in a traceback."""
    errors = []
    for path in rank_logs(log):
        line = _error_line(path.read_text(errors="replace")) if path.is_file() else None
        if line:
            errors.append(f"{path.name}: {line}")
    return errors


def tails(log: str | Path, lines: int = 15) -> str:
    """The last `lines` lines of every process's log, each under its file's name."""
    parts = []
    for path in rank_logs(log):
        text = path.read_text(errors="replace").splitlines() if path.is_file() else []
        kept = [line for line in text if line.strip()][-lines:]
        parts.append(f"---- last lines of {path} ----\n" + ("\n".join(kept) if kept else "(nothing written)"))
    return "\n".join(parts)


def clear_logs(log: str | Path) -> None:
    """Empty `log` and remove the other processes' logs of an earlier launch."""
    for path in rank_logs(log)[1:]:
        path.unlink()
    Path(log).write_text("")


def leave_the_kernel() -> None:
    """In a process forked from a Jupyter kernel (`run_in_processes`): stop talking to the
    notebook front end.

    A fork keeps the kernel's IPython shell, so `display()` of a table, the Trainer's notebook
    progress table and tqdm's widgets would send kernel messages from the child; the kernel's
    session refuses them with `attempted to send message from fork` and dumps each message, HTML
    and all, into the runner's console (124 of them, 87% of a `make run-all` console). With the
    shell cleared, `display()` prints to the log like any script, transformers picks its
    plain progress bars, and tqdm writes a final line (`nbutils.run.quiet`)."""
    try:
        from IPython.core.interactiveshell import InteractiveShell
    except ImportError:
        return
    if InteractiveShell.initialized():
        type(InteractiveShell.instance()).clear_instance()
    from nbutils.run import quiet

    quiet.use_final_line_progress()


def run_script(script: str, log: str) -> None:
    """One launched process: the notebook's script, its output in its own log (`rank_log`)."""
    import runpy

    os.environ[LAUNCHED] = "1"
    path = rank_log(log)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Open for the life of the process, not closed on the way out: what the interpreter writes
    # while it ends (a library's exit handlers) still has somewhere to go.
    out = open(path, "a", buffering=1)
    # A forked kernel's stdout belongs to the notebook front end, and every process of an
    # `accelerate launch` shares the launcher's: each writes to its own file.
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    sys.stdout = sys.stderr = out
    leave_the_kernel()
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except BaseException:
        # Into this process's log: a process forked by notebook_launcher hands its exception to
        # the launcher, which reports only that a process failed.
        traceback.print_exc()
        sys.exit(1)


def skip_remaining_cells(reason: str) -> None:
    """Turn every later cell of this kernel into a no-op (the launched processes ran them)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    shell.input_transformers_post.append(lambda lines: [f"# skipped: {reason}\n"])


def run_in_processes(name: str, parameters: dict, num_processes: int) -> dict:
    """Run notebook `name` with `parameters` in `num_processes` DDP processes from this kernel.

    Returns the run record the main process wrote; shows the log's tail and the plots; and
    makes the rest of this notebook's cells no-ops (restart the kernel to run cells here again).
    """
    import torch
    from accelerate import notebook_launcher

    from nbutils.run import environment, record

    run_dir = environment.run_folder(parameters["output_dir"])
    # The launch's own files wait beside the run folder: the processes publish the run folder
    # whole (nbutils.run.setup), and an earlier run stays in it until they do.
    scratch = run_dir.with_name(f".{run_dir.name}.launch")
    scratch.mkdir(parents=True, exist_ok=True)
    notebook = notebook_file(name)
    script = notebook_script(notebook, parameters, scratch / "launch")
    log = scratch / "launch.log"
    clear_logs(log)
    started = time.time()
    print(f"training in {num_processes} processes: each runs {notebook} with this notebook's "
          f"parameters (log: {log})")
    if not torch.cuda.is_available():  # no CUDA context is created by this check
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the Trainer then joins the processes over gloo
    try:
        notebook_launcher(run_script, args=(str(script), str(log)), num_processes=num_processes,
                          use_port=_free_port())
    except Exception as err:  # accelerate's error names the launcher, not what failed
        raise RuntimeError(_failure(f"the {num_processes} processes failed", log)) from err
    record_path = run_dir / record.RECORD_FILE
    if not record_path.is_file() or record_path.stat().st_mtime < started:  # an earlier run's
        raise RuntimeError(_failure(f"the {num_processes} processes finished without publishing a run record "
                                    f"in {run_dir}", log))
    for path in (log, scratch / "launch"):  # the logs join the run they describe
        path.replace(run_dir / path.name)
    shutil.rmtree(scratch, ignore_errors=True)
    run_record = record.read_record(run_dir)
    _show(run_record, run_dir)
    skip_remaining_cells(f"run in {num_processes} processes; results in {run_dir}")
    return run_record


def _failure(what: str, log: Path) -> str:
    """`what`, the processes' own errors, and the end of each one's log."""
    errors = "; ".join(process_errors(log)) or "no process ended in an error of its own"
    return f"{what} ({errors}); the end of each process's log:\n{tails(log, 20)}"


def _show(run_record: dict, run_dir: Path) -> None:
    try:
        from IPython.display import Image, display
    except ImportError:
        return
    metric = run_record["primary_metric"]
    print(f"{run_record['project']}: {metric} {run_record['metrics'][metric]:.4f} on the test split, "
          f"trained in {run_record['train'].get('processes')} processes; "
          "the cells below were run by those processes and are skipped here")
    display({k: run_record[k] for k in ("metrics", "baselines", "train", "data")}, raw=False)
    for plot in sorted(run_dir.glob("*.png")):
        display(Image(filename=str(plot)))


if __name__ == "__main__":  # `accelerate launch -m nbutils.parallel.launch <script> <log>` (the runner)
    run_script(sys.argv[1], sys.argv[2])
