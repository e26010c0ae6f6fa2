"""Run the collection's notebooks headless with papermill, and gather their run records.

    python -m nbutils.harness.runner run-all --profile smoke
    python -m nbutils.harness.runner run detect_ai_text/bert --profile smoke -p epochs=3
    python -m nbutils.harness.runner list --profile full

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
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nbutils.params import ParameterError, check_parameters, declared_parameters
from nbutils.record import RECORD_FILE, format_value, splits_digest

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


def _matching(projects: list[Project], name: str) -> list[str]:
    return [p.name for p in projects if p.name == name or p.name.startswith(name.rstrip("/") + "/")]


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
            hits = _matching(known, need)
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
    """Projects named exactly, or all variants of a named notebook (`detect_ai_text`)."""
    chosen = []
    for name in names:
        hits = [p for p in projects if p.name == name or p.name.startswith(name.rstrip("/") + "/")]
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
                       overrides: dict | None = None) -> dict:
    """Merged, checked parameters for one run, including the ones the runner sets itself."""
    if not project.notebook.is_file():
        raise ParameterError(f"{project.name}: notebook {project.notebook} does not exist")
    declared = declared_parameters(project.notebook)
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


class LaunchError(RuntimeError):
    """A multi-process run exited non-zero; the message ends with its last log line."""


def launch_processes(notebook: Path, parameters: dict, run_dir: Path, root: Path, nproc: int) -> Path:
    """Run a notebook in `nproc` processes with `accelerate launch` (DDP; gloo on a CPU).

    Papermill injects the parameters (prepare-only), nbconvert turns the notebook into a script,
    and every process runs that script; the Trainer shards the batches and only the main process
    writes files. Returns the log of all processes.
    """
    import torch

    from nbutils.launch import notebook_script

    script = notebook_script(notebook, parameters, run_dir / "launch")
    log = run_dir / "launch.log"
    # `--multi_gpu` selects accelerate's torchrun launcher (`--cpu` would start one process).
    # Without CUDA, ACCELERATE_USE_CPU makes the Trainer join the processes over gloo.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(nproc), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no"]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
    with log.open("w") as out:
        code = subprocess.run(command + [str(script)], cwd=root, env=env, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error:" in line]
        raise LaunchError(f"{nproc}-process run exited with {code} (log: {log}): "
                          f"{(errors or lines or [''])[-1].strip()}")
    return log


def headless_kernel_manager():
    """The kernel manager of headless runs: IPC transport (unix sockets in Jupyter's runtime
    folder) instead of TCP on localhost. Over TCP every kernel logs `Kernel is running over TCP
    without encryption ...` once per project; IPC is the transport that warning recommends,
    and a headless kernel needs no network port."""
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc"

    return IPCKernelManager


@contextmanager
def headless_environment():
    """Tell the kernels started here that no one watches them live (`nbutils.quiet`: progress
    bars write one final line instead of widgets frozen at 0% in the stored notebook)."""
    from nbutils.quiet import HEADLESS_VARIABLE

    saved = os.environ.get(HEADLESS_VARIABLE)
    os.environ[HEADLESS_VARIABLE] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(HEADLESS_VARIABLE, None)
        else:
            os.environ[HEADLESS_VARIABLE] = saved


def run_project(project: Project, profile: str, root: Path, outputs: Path,
                overrides: dict | None = None, kernel: str = KERNEL, log_output: bool = False,
                nproc: int = 1) -> Result:
    import papermill

    run_dir = outputs / profile / project.name
    executed = run_dir / project.notebook.name
    start = time.time()
    try:
        output_dir = os.path.relpath(run_dir, root)
        parameters = project_parameters(project, profile, output_dir, overrides)
        run_dir.mkdir(parents=True, exist_ok=True)
        # A record left by an earlier run must not pass for this one's.
        (run_dir / RECORD_FILE).unlink(missing_ok=True)
        with headless_environment():
            if nproc > 1:
                launch_processes(project.notebook, parameters, run_dir, root, nproc)
            else:
                papermill.execute_notebook(str(project.notebook), str(executed), parameters=parameters,
                                           kernel_name=kernel, cwd=str(root), progress_bar=False,
                                           log_output=log_output,
                                           kernel_manager_class=headless_kernel_manager())
        record_path = run_dir / RECORD_FILE
        if not record_path.is_file():
            raise RuntimeError(f"the notebook finished but wrote no {RECORD_FILE} in {run_dir}")
        record = json.loads(record_path.read_text())
        return Result(project.name, "ok", executed, time.time() - start, record, parameters=parameters)
    except Exception as err:  # one failed project must not stop the others
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


SUMMARY_COLUMNS = ("project", "status", "model", "metric", "value", "baseline", "train_s",
                   "samples_per_s", "tokens_per_s", "padding_eff", "trainable", "total", "splits",
                   "notebook")


def summary_rows(results: list[Result], root: Path) -> list[dict]:
    rows = []
    for r in results:
        rec = r.record or {}
        metric = rec.get("primary_metric")
        baselines = rec.get("baselines") or {}
        baseline = next(iter(baselines.values()), {}).get(metric) if baselines else None
        rows.append({
            "project": r.project, "status": r.status, "model": rec.get("model"), "metric": metric,
            "value": rec.get("metrics", {}).get(metric), "baseline": baseline,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbutils.harness.runner",
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
                        help="train in this many processes (accelerate launch; DDP, gloo on a CPU)")
    # Options may come before the project names too (`run --profile smoke detect_ai_text/bert`).
    args = parser.parse_intermixed_args(argv)

    root = Path(args.root).resolve()
    outputs = Path(args.outputs).resolve() if args.outputs else root / "outputs"
    try:
        projects = discover(root, args.profile)
        known = projects
        projects = order(projects)
    except OrderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not projects:
        print(f"no projects for profile {args.profile!r} under {root / 'params'}", file=sys.stderr)
        return 2
    if args.command == "list":
        for p in projects:
            print(f"{p.name:32s} {p.notebook.relative_to(root)}  "
                  + " ".join(str(f.relative_to(root)) for f in p.param_files)
                  + (f"  (after {', '.join(p.needs)})" if p.needs else ""))
        return 0
    if args.command == "run":
        if not args.projects:
            parser.error("`run` needs at least one project name")
        projects = order(select(projects, args.projects), known)  # in the order they need
    overrides = dict(args.param)
    after = dependencies(projects, known)

    results = []
    for project in projects:
        print(f"[{args.profile}] {project.name} ...", flush=True)
        # A project whose inputs did not come out of this invocation would read stale or
        # missing outputs: it is skipped, and the summary says why.
        blocked = [r.project for r in results if r.project in after[project.name] and r.status != "ok"]
        if blocked:
            result = Result(project.name, "skipped", outputs / args.profile / project.name
                            / project.notebook.name, 0.0,
                            error=f"not run: it needs {', '.join(blocked)}, which did not finish")
        else:
            result = run_project(project, args.profile, root, outputs, overrides, args.kernel,
                                 args.log_output, args.nproc)
        print(f"[{args.profile}] {project.name}: {result.status} in {result.seconds:.1f}s"
              + (f" - {result.error}" if result.error else ""), flush=True)
        results.append(result)

    if args.command == "run-all":  # the summary files describe a whole profile, not a subset
        print("\n" + write_summary(results, args.profile, root, outputs))
        print(f"summary: {os.path.relpath(outputs / args.profile / 'summary.md')} (and summary.json)")
    else:
        print("\n" + markdown_table(summary_rows(results, root)))
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        if r.status == "skipped":
            print(f"SKIPPED {r.project}: {r.error}", file=sys.stderr)
            continue
        where = (f"executed notebook: {os.path.relpath(r.notebook)}" if r.notebook.is_file()
                 else "stopped before the notebook ran")
        print(f"FAILED {r.project}: {r.error}\n  {where}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
