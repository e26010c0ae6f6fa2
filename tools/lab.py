"""Explore one project in JupyterLab at any profile: a copy of its notebook prepared with that
profile's parameters, opened in Lab.

    python -m tools.lab detect_ai_text/bert                  # smoke profile, opens Lab
    python -m tools.lab detect_ai_text/bert --profile full -p epochs=1
    python -m tools.lab detect_ai_text/bert --prepare-only   # just write the copy
    make lab RUN=detect_ai_text/bert [PROFILE=smoke]

The copy is the notebook with the profile's merged YAML values (checked like a headless run's)
written into its parameters cell itself, so the cell a learner edits is the one that counts
(papermill would inject a second cell below it, which silently overrides every edit). It is
written to `outputs/<profile>-lab/<project>.ipynb` with its own run folder beside it,
`outputs/<profile>-lab/<project>/`: exploring never touches the headless run's folder, and an
edited training parameter trains afresh (see `nbutils.run.setup`).

JupyterLab starts a notebook's kernel in the notebook's own folder, while the parameter files
give paths relative to the repository root. The paths are made absolute when the copy is
prepared (`absolute_paths`), not resolved by the notebook at run time: the notebook stays the
same code on Kaggle and Colab, where there is no repository, and the copy is a local, throwaway
file anyway. With every path absolute, the setup cell creates nothing beside the copy.

For the smoke profile Lab runs with `HF_HUB_OFFLINE=1`, as headless smoke runs do: a hub id
that slipped into a smoke setup fails at once instead of retrying the network for a minute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tools.runner import KERNEL, _override, discover, profile_environment, project_parameters, select

LAB_SUFFIX = "-lab"  # outputs/<profile>-lab/: Lab's copies and their run folders
KERNEL_DISPLAY_NAME = f"Python ({KERNEL})"
# Parameters that name a folder to create or read, whatever exists yet: always made absolute.
_FOLDER_PARAMETERS = ("output_dir", "runs_dir")


def _absolute(value, root: Path):
    """`value` with each relative path that exists under `root` made absolute (in lists and
    mappings too). Column names, hub ids and other strings stay as they are."""
    if isinstance(value, str):
        if value and not os.path.isabs(value) and ("/" in value or value.startswith(".")) \
                and (root / value).exists():
            return str((root / value).resolve())
        return value
    if isinstance(value, list):
        return [_absolute(v, root) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, root) for k, v in value.items()}
    return value


def absolute_paths(parameters: dict, root: Path) -> dict:
    """The parameters with paths relative to the repository root made absolute."""
    result = {}
    for name, value in parameters.items():
        if name in _FOLDER_PARAMETERS and isinstance(value, str) and value and not os.path.isabs(value):
            result[name] = str((root / value).resolve())
        else:
            result[name] = _absolute(value, root)
    return result


def write_values(source: str, values: dict) -> str:
    """A parameters cell's source with each assigned name in `values` set to that value; its
    annotation and comment kept (`epochs: float = 2  # passes` -> `epochs: float = 4  # passes`)."""
    import ast

    lines = source.splitlines(keepends=True)
    statements = [s for s in ast.parse(source).body if isinstance(s, (ast.Assign, ast.AnnAssign))]
    for statement in reversed(statements):  # from the bottom, so earlier offsets stay valid
        target = statement.target if isinstance(statement, ast.AnnAssign) else statement.targets[0]
        if not isinstance(target, ast.Name) or target.id not in values or statement.value is None:
            continue
        node = statement.value
        first, last = node.lineno - 1, node.end_lineno - 1
        start = len("".join(lines[:first]).encode()) + node.col_offset
        end = len("".join(lines[:last]).encode()) + node.end_col_offset
        encoded = "".join(lines).encode()
        text = (encoded[:start] + repr(values[target.id]).encode() + encoded[end:]).decode()
        lines = text.splitlines(keepends=True)
    return "".join(lines)


def with_values(notebook: Path, parameters: dict, note: str):
    """The notebook with `parameters` written into its parameters cell under a `# note` line:
    the one cell a reader edits is the one that counts (papermill's prepare mode would add an
    injected cell below it, which silently overrides every edit made above)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = f"# {note}\n" + write_values(cell.source, parameters)
    return nb


def prepare(project_name: str, profile: str, root: Path, outputs: Path | None = None,
            overrides: dict | None = None, kernel: str = KERNEL) -> Path:
    """Write the prepared copy of a project's notebook; returns its path."""
    import nbformat

    root = root.resolve()
    outputs = (outputs or root / "outputs").resolve()
    project = select(discover(root, profile), [project_name])
    if len(project) != 1:
        raise SystemExit(f"{project_name!r} names {len(project)} projects "
                         f"({', '.join(p.name for p in project)}); name one")
    project = project[0]
    lab_outputs = outputs / (profile + LAB_SUFFIX)
    run_dir = lab_outputs / project.name
    parameters = project_parameters(project, profile, str(run_dir), overrides)
    if parameters.get("runs_dir") == "":  # the ensemble: the headless detection runs of the profile
        parameters["runs_dir"] = str(outputs / profile / "detect_ai_text")
    parameters = absolute_paths(parameters, root)
    nb = with_values(project.notebook, parameters, f"The {profile} profile's values (params/"
                     f"{project.notebook.stem}/), written in by `make lab`: edit them here.")
    # The project's kernel, under the name JupyterLab shows for it.
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": KERNEL_DISPLAY_NAME, "language": "python"}
    copy = lab_outputs / (project.name + ".ipynb")
    copy.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, copy)
    return copy


def lab_environment(profile: str, environ: dict | None = None, root: Path | None = None) -> dict:
    """The environment JupyterLab (and so every kernel it starts) runs with: a headless run's
    (`runner.profile_environment`, for the repository at `root`, default this checkout), with
    live progress bars."""
    env = dict(os.environ if environ is None else environ)
    root = Path(__file__).resolve().parents[1] if root is None else root
    env.pop("NBUTILS_HEADLESS", None)  # someone watches: live progress bars
    if profile == "smoke":
        env["HF_HUB_OFFLINE"] = "1"
    env.update(profile_environment(profile, root, env))
    return env


def lab_command(notebook: Path, root: Path, port: int | None = None, token: str | None = None,
                open_browser: bool = True, allow_root: bool = False) -> list[str]:
    """`jupyter lab` serving the repository, opening `notebook`."""
    jupyter = Path(sys.executable).with_name("jupyter")
    command = [str(jupyter) if jupyter.exists() else shutil.which("jupyter") or "jupyter", "lab",
               f"--ServerApp.root_dir={root}"]
    if os.name == "posix":  # kernels over unix sockets: no "running over TCP without encryption"
        command.append("--KernelManager.transport=ipc")
    if port:
        command.append(f"--ServerApp.port={port}")
    if token is not None:
        command.append(f"--IdentityProvider.token={token}")
    if not open_browser:
        command.append("--no-browser")
    if allow_root or running_as_root():  # Kaggle, Colab, most containers: Lab refuses root without it
        command.append("--allow-root")
    return command + [os.path.relpath(notebook, root)]


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("project", help="a project, e.g. detect_ai_text/bert (`make list` names them)")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--root", default=".", help="the repository root")
    parser.add_argument("--outputs", default=None, help="where runs land (default ROOT/outputs)")
    parser.add_argument("-p", "--param", action="append", type=_override, default=[], metavar="KEY=VALUE")
    parser.add_argument("--kernel", default=KERNEL)
    parser.add_argument("--prepare-only", action="store_true", help="write the copy, do not start Lab")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--token", default=None, help="Lab's access token (default: Lab makes a random one)")
    parser.add_argument("--allow-root", action="store_true", help="passed to jupyter lab (added by itself as root)")
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    copy = prepare(args.project, args.profile, root, Path(args.outputs) if args.outputs else None,
                   dict(args.param), args.kernel)
    print(f"prepared {os.path.relpath(copy, root)} ({args.profile} parameters, absolute paths)")
    if args.prepare_only:
        return 0
    command = lab_command(copy, root, args.port, args.token, not args.no_browser, args.allow_root)
    env = lab_environment(args.profile, root=root)
    print("starting:", " ".join(command[:2]), "(HF_HUB_OFFLINE=1)" if env.get("HF_HUB_OFFLINE") else "")
    os.execvpe(command[0], command, env)  # Lab takes over this process (Ctrl-C stops it)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
