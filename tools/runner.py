"""Run the collection's notebooks headless with papermill, and gather their run records.

    python -m tools.runner run-all --profile smoke
    python -m tools.runner run detect_ai_text/bert --profile smoke -p epochs=3
    python -m tools.runner list --profile full

A *project* is a notebook plus its parameter files for a profile:

    params/<notebook>/<profile>.yaml            shared by every variant of the profile
    params/<notebook>/<profile>/<variant>.yaml  one project per variant: <notebook>/<variant>

The files are merged in that order (later wins, as with papermill's repeated `-f`), checked
against the notebook's declared parameters, and the run lands in
`outputs/<profile>/<project>/`: the executed notebook, `metrics.json` and the plots.
A project that fails does not stop the others; the summary names it and the exit code is 1.

A notebook that reads the outputs of other projects declares them in its metadata,
`{"nbutils": {"needs": ["detect_ai_text"]}}` (notebook names or project names of the same
profile): its projects run after those, and are skipped, with the reason, when one of them
failed in the same invocation. A cycle of needs is an error before anything runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nbutils.run.params import ParameterError, check_parameters, declared_parameters
from nbutils.run.record import RECORD_FILE, format_value, splits_digest

KERNEL = "llm-notebooks"


@dataclass
class Project:
    name: str
    notebook: Path
    param_files: list[Path]
    needs: list[str] = field(default_factory=list)  # projects whose outputs it reads


class OrderError(ValueError):
    """Projects that cannot be ordered: a need that names no project, or a cycle of needs."""


def notebook_needs(notebook: Path) -> list[str]:
    """The projects a notebook's runs read the outputs of: its metadata's `nbutils.needs`."""
    if not notebook.is_file():
        return []  # reported when the project runs (project_parameters)
    needs = json.loads(notebook.read_text()).get("metadata", {}).get("nbutils", {}).get("needs", [])
    if not isinstance(needs, list) or not all(isinstance(n, str) and n for n in needs):
        raise OrderError(f"{notebook}: metadata nbutils.needs must be a list of project or "
                         f"notebook names, got {needs!r}")
    return needs


@dataclass
class Result:
    project: str
    status: str  # "ok", "failed", or "skipped" (a project it needs did not finish)
    notebook: Path
    seconds: float
    record: dict | None = None
    error: str = ""
    parameters: dict = field(default_factory=dict)


def discover(root: Path, profile: str) -> list[Project]:
    """Every project of `profile`, in a stable order."""
    projects = []
    params_root = root / "params"
    for folder in sorted(p for p in params_root.iterdir() if p.is_dir()):
        notebook = root / "notebooks" / f"{folder.name}.ipynb"
        base = folder / f"{profile}.yaml"
        variants = sorted((folder / profile).glob("*.yaml")) if (folder / profile).is_dir() else []
        shared = [base] if base.is_file() else []
        needs = notebook_needs(notebook) if variants or shared else []
        if variants:
            projects += [Project(f"{folder.name}/{v.stem}", notebook, shared + [v], needs)
                         for v in variants]
        elif shared:
            projects.append(Project(folder.name, notebook, shared, needs))
    return projects


def matching(projects: list[Project], name: str) -> list[Project]:
    """The projects `name` stands for: the one named exactly, or every variant of the notebook
    `name` (`detect_ai_text` -> `detect_ai_text/bert`, ...)."""
    return [p for p in projects if p.name == name or p.name.startswith(name.rstrip("/") + "/")]


def dependencies(projects: list[Project], known: list[Project] | None = None) -> dict[str, list[str]]:
    """For each project, the projects among `projects` it must run after. Needs are resolved
    against `known` (all projects of the profile): one that names none of them is an error,
    one whose projects are not being run now (`run` of a subset) reads their earlier outputs."""
    known = projects if known is None else known
    running = {p.name for p in projects}
    result = {}
    for project in projects:
        after = []
        for need in project.needs:
            hits = [p.name for p in matching(known, need)]
            if not hits:
                raise OrderError(f"{project.name}: its notebook {project.notebook.name} needs {need!r}, "
                                 "which is no project of this profile; projects: "
                                 + ", ".join(p.name for p in known))
            after += [h for h in hits if h in running and h not in after]
        result[project.name] = after
    return result


def order(projects: list[Project], known: list[Project] | None = None) -> list[Project]:
    """`projects` in run order: each after the projects it needs, otherwise as given."""
    after = dependencies(projects, known)
    ordered, done, pending = [], set(), list(projects)
    while pending:
        ready = next((p for p in pending if set(after[p.name]) <= done), None)
        if ready is None:  # every pending project waits for another pending one: a cycle
            path = [pending[0].name]
            while True:
                step = next(n for n in after[path[-1]] if n not in done)
                if step in path:
                    cycle = path[path.index(step):] + [step]
                    raise OrderError("projects need each other in a cycle: " + " -> ".join(cycle)
                                     + " (see the `nbutils.needs` metadata of their notebooks)")
                path.append(step)
        ordered.append(ready)
        done.add(ready.name)
        pending.remove(ready)
    return ordered


def select(projects: list[Project], names: list[str]) -> list[Project]:
    """The projects `names` stand for (see `matching`), each once; an unknown name is an error."""
    chosen = []
    for name in names:
        hits = matching(projects, name)
        if not hits:
            raise SystemExit(f"unknown project {name!r}; projects of this profile: "
                             + ", ".join(p.name for p in projects))
        chosen += [p for p in hits if p not in chosen]
    return chosen


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParameterError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a mapping of parameter names to values")
    return data


def project_parameters(project: Project, profile: str, output_dir: str,
                       overrides: dict | None = None, declared: dict | None = None) -> dict:
    """Merged, checked parameters for one run, including the ones the runner sets itself.
    `declared`: the notebook's parameters and type names (default: read with papermill)."""
    if not project.notebook.is_file():
        raise ParameterError(f"{project.name}: notebook {project.notebook} does not exist")
    declared = declared_parameters(project.notebook) if declared is None else declared
    merged: dict = {}
    for path in project.param_files:
        values = load_yaml(path)
        check_parameters(declared, values, str(path))
        merged.update(values)
    if overrides:
        check_parameters(declared, overrides, "command-line overrides")
        merged.update(overrides)
    runner_set = {"project": project.name, "profile": profile, "output_dir": output_dir}
    check_parameters(declared, runner_set, "the runner's parameters (project, profile, output_dir)")
    return {**merged, **runner_set}


def _parameters_cell(notebook: Path) -> list:
    """The annotated assignments of a notebook's parameters cell (tests/notebooks/test_params.py
    keeps it to plain `name: type = literal  # help` lines, and papermill reads the same)."""
    import ast

    cells = [c for c in json.loads(notebook.read_text())["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{notebook}: expected one cell tagged 'parameters', found {len(cells)}")
    return [node for node in ast.parse("".join(cells[0]["source"])).body
            if isinstance(node, ast.AnnAssign) and node.value is not None]


def notebook_defaults(notebook: Path) -> dict:
    """The defaults of a notebook's parameters cell, as a run gets them before its parameter files."""
    import ast

    return {node.target.id: ast.literal_eval(node.value) for node in _parameters_cell(notebook)}


def recipe_parameters(project: Project, profile: str, output_dir: str = "out") -> dict:
    """Everything a run of `project` gets: the notebook's defaults, then its merged parameter
    files (checked against the cell's names and types, read without papermill: `make
    gpu-check` runs where only the training stack is installed) and the runner's own values."""
    import ast

    declared = {node.target.id: ast.unparse(node.annotation) for node in _parameters_cell(project.notebook)}
    return {**notebook_defaults(project.notebook),
            **project_parameters(project, profile, output_dir, declared=declared)}


class LaunchError(RuntimeError):
    """A multi-process run exited non-zero or stalled; the message ends with a process's own
    error (the runner's summary shows a message's last line)."""


# Seconds without a new line from any process after which a launched run is stopped: processes
# waiting in different collectives wait forever (gloo's own timeout is 30 minutes per
# collective, and a run that retries waits again). A silent step of a large model can be long,
# hence the generous default; `--stall-timeout` or this variable sets it.
STALL_VARIABLE = "NBUTILS_STALL_TIMEOUT"
STALL_TIMEOUT = 1800.0


def stall_timeout(environ=None) -> float:
    environ = os.environ if environ is None else environ
    value = environ.get(STALL_VARIABLE, "")
    try:
        seconds = float(value) if value else STALL_TIMEOUT
    except ValueError:
        raise ValueError(f"{STALL_VARIABLE} must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"{STALL_VARIABLE} must be a number of seconds above 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Machines:
    """Several machines from the command line: how many, this one's rank, where the main one
    (rank 0) listens. Every machine runs the same command with its own `node_rank`."""
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    def __post_init__(self):
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node-rank must be in 0..{self.nnodes - 1} for --nnodes {self.nnodes}, "
                             f"got {self.node_rank}")

    def accelerate_options(self, nproc: int) -> list[str]:
        """accelerate launch options: its --num_processes counts the processes of all machines."""
        options = ["--num_processes", str(nproc * self.nnodes), "--num_machines", str(self.nnodes)]
        if self.nnodes > 1:
            options += ["--machine_rank", str(self.node_rank), "--main_process_ip", self.master_addr,
                        "--main_process_port", str(self.master_port)]
        return options


def launch_processes(notebook: Path, parameters: dict, run_dir: Path, root: Path, nproc: int,
                     machines: Machines = Machines()) -> Path:
    """Run a notebook in `nproc` processes (on each of `machines`) with `accelerate launch`
    (DDP or FSDP, as the notebook's `distributed` says; gloo on a CPU).

    Papermill injects the parameters (prepare-only), nbconvert turns the notebook into a script,
    and every process runs that script; the Trainer shards the batches and only the main process
    writes files. Returns the log of this machine's processes (another machine's launch writes
    its own, `launch-node<rank>.log`, so two launches sharing a folder do not clash).
    """
    from nbutils.parallel.launch import notebook_script

    suffix = f"-node{machines.node_rank}" if machines.node_rank else ""
    script = notebook_script(notebook, parameters, run_dir / f"launch{suffix}")
    return launch_script(script, run_dir / f"launch{suffix}.log", root, nproc, machines)


def _stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """End the launcher and every process it started (their own session: `start_new_session`)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def launch_script(script: Path, log: Path, root: Path, nproc: int, machines: Machines = Machines(),
                  stall_after: float | None = None) -> Path:
    """Run `script` in `nproc` processes (on each of `machines`) with `accelerate launch`; returns
    `log`. The first process of this machine writes `log`, each other one its own
    `<log without .log>/rank<R>.log` (`nbutils.parallel.launch.rank_log`), and the launcher's own lines
    `<log without .log>/launcher.log`: every line once.

    A watchdog: when no process has written a line for `stall_after` seconds (`stall_timeout`),
    all are stopped. A failed or stopped run prints the last lines of every process and raises
    `LaunchError` ending with the processes' own errors."""
    import torch

    from nbutils.parallel import launch

    stall_after = stall_timeout() if stall_after is None else stall_after
    # `--multi_gpu` selects accelerate's torchrun launcher (`--cpu` would start one process).
    # Without CUDA, ACCELERATE_USE_CPU makes the Trainer join the processes over gloo.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               *machines.accelerate_options(nproc), "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "nbutils.parallel.launch", str(script), str(log)]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
    launch.clear_logs(log)

    def written() -> int:
        return sum(p.stat().st_size for p in launch.rank_logs(log) if p.is_file())

    launcher_log = log.with_suffix("") / "launcher.log"
    launcher_log.parent.mkdir(parents=True, exist_ok=True)
    with launcher_log.open("w") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        size, last_change, stalled = -1, time.monotonic(), False
        try:
            while process.poll() is None:
                now = written()
                if now != size:
                    size, last_change = now, time.monotonic()
                elif time.monotonic() - last_change > stall_after:
                    stalled = True
                    _stop(process)
                    break
                time.sleep(0.5)
        finally:
            if process.poll() is None:  # interrupted (Ctrl-C): leave no process behind
                _stop(process)
    code = process.returncode
    if code == 0 and not stalled:
        return log
    print(launch.tails(log), file=sys.stderr, flush=True)
    # A process's own error last (the summary's line): the others' follow from it (a peer that
    # died closes the connections the rest were waiting on).
    errors = sorted(launch.process_errors(log), key=lambda line: "Connection closed" in line or "gloo" in line,
                    reverse=True)
    what = (f"no process wrote a line for {stall_after:g} s: all {nproc * machines.nnodes} stopped "
            f"(processes waiting for each other; {STALL_VARIABLE} or --stall-timeout sets the wait)"
            if stalled else f"{nproc}-process run exited with {code}")
    raise LaunchError(f"{what}; logs: {log} and {log.with_suffix('')}/rank*.log\n"
                      + ("\n".join(errors) if errors else "no process ended in an error of its own"))


def headless_kernel_manager():
    """The kernel manager of headless runs: IPC transport (unix sockets in Jupyter's runtime
    folder) instead of TCP on localhost. Over TCP every kernel logs `Kernel is running over TCP
    without encryption ...` once per project; IPC is the transport that warning recommends,
    and a headless kernel needs no network port."""
    import uuid

    from jupyter_client import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc"

        @default("ip")
        def _ip_default(self):
            # jupyter_client's own default is the relative path `kernel-ipc` (sockets
            # `kernel-ipc-1` ... in the working folder), the same for every kernel: kernels
            # started side by side (run-all's workers, parallel tests) would bind each other's
            # sockets. One fresh path per kernel keeps them apart.
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            return str(runtime / f"kernel-{uuid.uuid4().hex[:12]}-ipc")

    return IPCKernelManager


@contextmanager
def headless_environment():
    """Tell the kernels started here that no one watches them live (`nbutils.run.quiet`: progress
    bars write one final line instead of widgets frozen at 0% in the stored notebook)."""
    from nbutils.run.quiet import HEADLESS_VARIABLE

    saved = os.environ.get(HEADLESS_VARIABLE)
    os.environ[HEADLESS_VARIABLE] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(HEADLESS_VARIABLE, None)
        else:
            os.environ[HEADLESS_VARIABLE] = saved


# The smoke profile trains FSDP over CPUs (gloo), which accelerate does only for accelerator
# devices: its processes get the tests' fixture switch (a `sitecustomize` in this folder, under
# the repository root) on PYTHONPATH. The full profile, on GPUs, needs no switch.
FSDP_ON_CPU = Path("tests", "fixtures", "fsdp_on_cpu")


def profile_environment(profile: str, root: Path, environ: dict | None = None) -> dict:
    """The environment variables a run of `profile` needs beyond `environ` (default: this
    process's): for the smoke profile, PYTHONPATH with the FSDP-on-CPU fixture first."""
    environ = os.environ if environ is None else environ
    if profile != "smoke":
        return {}
    paths = [str(root / FSDP_ON_CPU), *[p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


@contextmanager
def run_environment(profile: str, root: Path):
    """`profile_environment` in this process's environment while the block runs (the kernels
    and processes started meanwhile inherit it)."""
    changes = profile_environment(profile, root)
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Once the last cell has run, the kernel is stopped at once rather than asked to exit: a kernel
# that imported torch and transformers spends about 2 s of CPU tearing down its modules on a
# normal exit (measured: a 1-cell notebook `from transformers import Trainer` took 12.0 s with
# 8.3 s in the cell; a plain Python process exits 2.06 s after its last line, 0.05 s through
# os._exit), once per project and per notebook test. Nothing is lost: every file a notebook
# writes is written by its cells, which have all returned, and the executed notebook is written
# by papermill in this process. (nbclient's `shutdown_kernel`; JupyterLab keeps its own.)
KERNEL_SHUTDOWN = "immediate"


def run_folder(project: Project, profile: str, root: Path, outputs: Path, overrides: dict | None = None) -> Path:
    """Where a project's run lands: `<outputs>/<profile>/<project>`, or the `output_dir` given on
    the command line (relative to the repository root)."""
    given = (overrides or {}).get("output_dir")
    if given is not None:
        if not isinstance(given, str) or not given:
            raise ParameterError(f"output_dir must be a folder path, got {given!r}")
        return (root / given).resolve()
    return outputs / profile / project.name


def _move_into(folder: Path, files: list[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        if path.exists():
            path.replace(folder / path.name)


def run_project(project: Project, profile: str, root: Path, outputs: Path,
                overrides: dict | None = None, kernel: str = KERNEL, log_output: bool = False,
                nproc: int = 1, machines: Machines = Machines()) -> Result:
    """Run one project. The notebook works in `<run folder>.incomplete` and, once finished,
    publishes it as the run folder (`nbutils.run.setup.Run.finish`); the executed notebook and the
    launch logs are written beside it meanwhile, then moved into the published folder, or, on
    failure, into the incomplete one, beside whatever that run left: the earlier complete run
    stays whole."""
    import papermill

    from nbutils.run.setup import attempt_folder

    start = time.time()
    run_dir = outputs / profile / project.name
    executed = run_dir / project.notebook.name
    try:
        run_dir = run_folder(project, profile, root, outputs, overrides)
        executed = run_dir / project.notebook.name
        output_dir = os.path.relpath(run_dir, root)
        parameters = project_parameters(project, profile, output_dir, {
            k: v for k, v in (overrides or {}).items() if k != "output_dir"})
    except Exception as err:
        return Result(project.name, "failed", executed, time.time() - start, error=f"{type(err).__name__}: {err}"[:500])
    # The runner's own files while the notebook runs: beside the run folders, never in them.
    # (One per machine: two "machines" on one disk each launch their own processes.)
    scratch = run_dir.with_name(f".{run_dir.name}.running" + (f"-node{machines.node_rank}" if machines.node_rank else ""))
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        if machines.node_rank:  # another machine's part of a run: the main machine publishes it
            with headless_environment(), run_environment(profile, root):
                log = launch_processes(project.notebook, parameters, scratch, root, nproc, machines)
            log.replace(run_dir.with_name(f"{run_dir.name}.{log.name}"))  # beside it: it may share a disk
            return Result(project.name, "ok", executed, time.time() - start, {}, parameters=parameters)
        with headless_environment(), run_environment(profile, root):
            if nproc > 1 or machines.nnodes > 1:
                launch_processes(project.notebook, parameters, scratch, root, nproc, machines)
            else:
                papermill.execute_notebook(str(project.notebook), str(scratch / project.notebook.name),
                                           parameters=parameters,
                                           kernel_name=kernel, cwd=str(root), progress_bar=False,
                                           log_output=log_output,
                                           kernel_manager_class=headless_kernel_manager(),
                                           shutdown_kernel=KERNEL_SHUTDOWN)
        record_path = run_dir / RECORD_FILE
        if not record_path.is_file() or record_path.stat().st_mtime < start:
            raise RuntimeError(f"the notebook finished but published no new {RECORD_FILE} in {run_dir} "
                               f"(its last cell, run.finish(), publishes the run)")
        _move_into(run_dir, list(scratch.iterdir()))
        record = json.loads(record_path.read_text())
        return Result(project.name, "ok", executed, time.time() - start, record, parameters=parameters)
    except Exception as err:  # one failed project must not stop the others
        failed_dir = attempt_folder(run_dir)
        _move_into(failed_dir, list(scratch.iterdir()))  # the failed attempt, clearly named
        executed = failed_dir / project.notebook.name
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        if isinstance(err, ParameterError):
            summary = " ".join(lines)  # the bad name and the valid ones, all of it
        elif isinstance(err, papermill.PapermillExecutionError) and err.evalue:
            # The notebook's own exception, all of its message: its first line names what went
            # wrong (a message may go on with how to fix it over several lines).
            summary = f"{err.ename}: " + " ".join(line.strip() for line in err.evalue.splitlines() if line.strip())
        else:  # papermill's message ends with the notebook's own exception line
            summary = lines[-1] if lines else ""
            if not isinstance(err, (papermill.PapermillExecutionError, LaunchError)):
                traceback.print_exc()
        return Result(project.name, "failed", executed, time.time() - start,
                      error=f"{type(err).__name__}: {summary}"[:500])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


SUMMARY_COLUMNS = ("project", "status", "model", "metric", "value", "interval", "measured_on", "baseline", "train_s",
                   "samples_per_s", "tokens_per_s", "padding_eff", "trainable", "total", "splits",
                   "notebook")


def summary_rows(results: list[Result], root: Path) -> list[dict]:
    rows = []
    for r in results:
        rec = r.record or {}
        metric = rec.get("primary_metric")
        baselines = rec.get("baselines") or {}
        baseline = next(iter(baselines.values()), {}).get(metric) if baselines else None
        interval = (rec.get("metrics", {}).get("intervals") or {}).get(metric)
        rows.append({
            "project": r.project, "status": r.status, "model": rec.get("model"), "metric": metric,
            "value": rec.get("metrics", {}).get(metric),
            # the headline's bootstrap interval (95% unless the record says otherwise) and its split
            "interval": f"[{interval['low']:.3f}, {interval['high']:.3f}]" if interval else None,
            "measured_on": (rec.get("metrics", {}).get("measured_on") or {}).get(metric), "baseline": baseline,
            "train_s": rec.get("train", {}).get("runtime_s"),
            "samples_per_s": rec.get("train", {}).get("samples_per_s"),
            "tokens_per_s": rec.get("train", {}).get("tokens_per_s"),
            "padding_eff": rec.get("train", {}).get("padding_efficiency"),
            "trainable": rec.get("parameters", {}).get("trainable"),
            "total": rec.get("parameters", {}).get("total"),
            "splits": splits_digest(rec),  # rows with other digests scored other rows
            "notebook": os.path.relpath(r.notebook, root), "error": r.error,
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row[c]) for c in SUMMARY_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_summary(results: list[Result], profile: str, root: Path, outputs: Path) -> str:
    rows = summary_rows(results, root)
    folder = outputs / profile
    folder.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    (folder / "summary.md").write_text(f"# Runs of profile `{profile}`\n\n" + table)
    (folder / "summary.json").write_text(json.dumps(
        {"profile": profile, "columns": list(SUMMARY_COLUMNS), "runs": rows}, indent=2) + "\n")
    return table


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    # An empty value is the empty string (YAML would read it as null, which no typed
    # parameter accepts): `-p tables_source=` clears a string parameter.
    return key.strip(), yaml.safe_load(value) if value.strip() else ""


def _jobs(text: str) -> int:
    jobs = int(text)
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"expected a number of projects to run at once, 1 or more, got {text}")
    return jobs


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.runner",
                                     description="Run the notebook collection with papermill.")
    parser.add_argument("command", choices=["run-all", "run", "list"])
    parser.add_argument("projects", nargs="*", help="with `run`: project names (or a notebook name)")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--root", default=".", help="the repository root")
    parser.add_argument("--outputs", default=None, help="where runs land (default ROOT/outputs)")
    parser.add_argument("-p", "--param", action="append", type=_override, default=[],
                        metavar="KEY=VALUE", help="override a parameter (YAML value)")
    parser.add_argument("--kernel", default=KERNEL)
    parser.add_argument("--log-output", action="store_true", help="stream notebook output")
    parser.add_argument("--nproc", type=int, default=1,
                        help="train in this many processes on each machine (accelerate launch; "
                             "DDP or FSDP as the notebook's `distributed` says; gloo on a CPU)")
    parser.add_argument("--nnodes", type=int, default=1, help="machines taking part (each runs this command)")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's rank, 0 on the main one")
    parser.add_argument("--master-addr", default="127.0.0.1", help="address of the main machine (rank 0)")
    parser.add_argument("--master-port", type=int, default=29500, help="port the main machine listens on")
    parser.add_argument("--stall-timeout", type=float, default=None, metavar="SECONDS",
                        help=f"with --nproc/--nnodes: stop the processes when none has written a line for "
                             f"this long (default {STALL_TIMEOUT:g}, or ${STALL_VARIABLE})")
    parser.add_argument("-j", "--jobs", type=_jobs, default=1,
                        help="run this many projects at once, each in its own worker process and "
                             "kernel; a project starts after the projects it needs have finished")
    # Options may come before the project names too (`run --profile smoke detect_ai_text/bert`).
    args = parser.parse_intermixed_args(argv)
    if args.command == "run" and not args.projects:
        parser.error("`run` needs at least one project name")
    try:
        args.machines = Machines(args.nnodes, args.node_rank, args.master_addr, args.master_port)
    except ValueError as err:
        parser.error(str(err))
    return args


def list_projects(projects: list[Project], root: Path) -> int:
    for p in projects:
        print(f"{p.name:32s} {p.notebook.relative_to(root)}  "
              + " ".join(str(f.relative_to(root)) for f in p.param_files)
              + (f"  (after {', '.join(p.needs)})" if p.needs else ""))
    return 0


@dataclass
class Invocation:
    """What every project of one `run` or `run-all` shares; sent to the worker processes."""
    profile: str
    root: Path
    outputs: Path
    overrides: dict = field(default_factory=dict)
    kernel: str = KERNEL
    log_output: bool = False
    nproc: int = 1
    machines: Machines = field(default_factory=Machines)

    def run(self, project: Project) -> Result:
        return run_project(project, self.profile, self.root, self.outputs, self.overrides, self.kernel,
                           self.log_output, self.nproc, self.machines)

    def skip(self, project: Project, blocked: list[str]) -> Result:
        """A project whose inputs did not come out of this invocation would read stale or missing
        outputs: it is not run, and the summary says why."""
        return Result(project.name, "skipped", self.outputs / self.profile / project.name
                      / project.notebook.name, 0.0,
                      error=f"not run: it needs {', '.join(blocked)}, which did not finish")

    def failed(self, project: Project, err: BaseException) -> Result:
        """A worker process that died (killed, out of memory) fails only its project."""
        return Result(project.name, "failed", self.outputs / self.profile / project.name
                      / project.notebook.name, 0.0, error=f"{type(err).__name__}: {err}"[:500])


def _next_ready(waiting: list[Project], after: dict[str, list[str]], results: dict[str, Result]):
    """The first waiting project whose needs have all finished (well or not), or None."""
    return next((p for p in waiting if all(n in results for n in after[p.name])), None)


# The thread pools torch and its BLAS size from these (one thread per core by default).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Each of `jobs` side-by-side jobs' share of the cores (at least one thread)."""
    return max(1, (cores or os.cpu_count() or 1) // max(jobs, 1))


def share_cores(jobs: int, environ=None) -> dict:
    """With several jobs side by side, give each its share of the cores (set in `environ`, which
    the jobs' processes and kernels inherit; a value the user set is kept). torch's default, a
    thread per core in every job, oversubscribes the CPU: OpenMP threads spin at each barrier
    while their partner waits for a core, and a smoke project that trains in 20 s alone took
    170 s beside another (2 jobs on 2 cores). Returns what it set. One thread instead of two
    changes float sums in the last bits (detection thresholds moved by up to 2e-6), and a run
    that amplifies them can land elsewhere: the strategies study's full fine-tuning at a high
    learning rate, and with it its headline ROC AUC (0.912 one job at a time, 0.936 two at once),
    so compare records made with the same JOBS."""
    environ = os.environ if environ is None else environ
    set_here = {}
    if jobs > 1:
        for name in THREAD_VARIABLES:
            if name not in environ:
                environ[name] = set_here[name] = str(threads_per_job(jobs))
    return set_here


@contextmanager
def _workers(jobs: int):
    """`jobs` worker processes, or None for one project at a time in this process. Processes,
    not threads: papermill changes the working folder of its whole process while it runs a
    notebook. Spawned, not forked: a fork copies this process's threads' locks mid-state."""
    if jobs <= 1:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_projects(projects: list[Project], after: dict[str, list[str]], invocation: Invocation,
                 jobs: int = 1) -> list[Result]:
    """Run `projects` (given in run order, see `order`), up to `jobs` at once: each starts once
    the projects it needs (`after`) have finished, and is skipped when one of them did not finish
    well. Results come in the order of `projects`, whichever finished first."""
    from concurrent.futures import FIRST_COMPLETED, wait

    results: dict[str, Result] = {}
    waiting, running = list(projects), {}

    def finish(project: Project, result: Result) -> None:
        nothing = (result.record or {}).get("train", {}).get("resumed_finished")
        print(f"[{invocation.profile}] {project.name}: {result.status} in {result.seconds:.1f}s"
              + (" - nothing trained: it continued a finished run with the same parameters "
                 "(the record keeps that run's training figures)" if nothing else "")
              + (f" - {result.error}" if result.error else ""), flush=True)
        results[project.name] = result

    with _workers(jobs) as pool:
        while waiting or running:
            project = _next_ready(waiting, after, results) if len(running) < jobs else None
            if project is None:  # every free worker waits for a running project to finish
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    finished = running.pop(future)
                    try:
                        finish(finished, future.result())
                    except Exception as err:  # the worker process itself died
                        finish(finished, invocation.failed(finished, err))
                continue
            waiting.remove(project)
            print(f"[{invocation.profile}] {project.name} ...", flush=True)
            blocked = [n for n in after[project.name] if results[n].status != "ok"]
            if blocked:
                finish(project, invocation.skip(project, blocked))
            elif pool is None:
                finish(project, invocation.run(project))
            else:
                running[pool.submit(invocation.run, project)] = project
    return [results[p.name] for p in projects]


def on_disk(projects: list[Project], results: list[Result], profile: str, outputs: Path) -> list[Result]:
    """The results of this invocation, and for every other project of the profile the run its
    folder holds (its record), in run order: the summary describes what is on disk."""
    ran = {r.project: r for r in results}
    rows = []
    for project in projects:
        if project.name in ran:
            rows.append(ran[project.name])
            continue
        folder = outputs / profile / project.name
        if (folder / RECORD_FILE).is_file():
            rows.append(Result(project.name, "ok", folder / project.notebook.name, 0.0,
                               json.loads((folder / RECORD_FILE).read_text())))
    return rows + [r for r in results if r.project not in {p.name for p in projects}]


def report(results: list[Result], command: str, profile: str, root: Path, outputs: Path,
           known: list[Project] | None = None) -> int:
    """Print the summary table of this invocation, rebuild the summary files from the records on
    disk (every project of the profile), and name what failed."""
    print("\n" + markdown_table(summary_rows(results, root)))
    if all(r.notebook.is_relative_to(outputs / profile) for r in results):  # not an output_dir elsewhere
        write_summary(on_disk(known or [], results, profile, outputs), profile, root, outputs)
        print(f"summary: {os.path.relpath(outputs / profile / 'summary.md')} (and summary.json)")
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        if r.status == "skipped":
            print(f"SKIPPED {r.project}: {r.error}", file=sys.stderr)
            continue
        launched = r.notebook.parent / "launch.log"
        where = (f"executed notebook: {os.path.relpath(r.notebook)}" if r.notebook.is_file()
                 else f"log of the processes: {os.path.relpath(launched)}" if launched.is_file()
                 else "stopped before the notebook ran")
        print(f"FAILED {r.project}: {r.error}\n  {where}", file=sys.stderr)
    return 1 if failed else 0


def run_command(args: argparse.Namespace, projects: list[Project], known: list[Project], root: Path,
                outputs: Path) -> int:
    """`run` and `run-all`: run `projects` (in run order), then report."""
    invocation = Invocation(args.profile, root, outputs, dict(args.param), args.kernel,
                            args.log_output, args.nproc, args.machines)
    # Set before the worker processes start, so that they and their kernels inherit it.
    share_cores(args.jobs)
    if args.stall_timeout is not None:
        os.environ[STALL_VARIABLE] = str(args.stall_timeout)
    stall_timeout()  # a malformed value stops here, before anything runs
    with headless_environment():
        results = run_projects(projects, dependencies(projects, known), invocation, args.jobs)
    return report(results, args.command, args.profile, root, outputs, order(known))


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    root = Path(args.root).resolve()
    outputs = Path(args.outputs).resolve() if args.outputs else root / "outputs"
    try:
        known = discover(root, args.profile)
        projects = order(known)
    except OrderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not projects:
        print(f"no projects for profile {args.profile!r} under {root / 'params'}", file=sys.stderr)
        return 2
    if args.command == "list":
        return list_projects(projects, root)
    if args.command == "run":
        projects = order(select(projects, args.projects), known)  # in the order they need
    return run_command(args, projects, known, root, outputs)


if __name__ == "__main__":
    # Through the imported module, so that worker processes unpickle its classes by their name
    # (`python -m` would otherwise define them in `__main__`, which a spawned worker lacks).
    from tools import runner

    sys.exit(runner.main())
