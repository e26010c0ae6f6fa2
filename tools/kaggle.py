"""Kaggle bundles: every project of a profile as a folder ready for `kaggle kernels push`.

    python -m tools.kaggle [--profile full] [--out outputs/kaggle]   (or `make kaggle`)

Each project folder holds the notebook with its parameters already injected (papermill's
prepare-only mode, so Kaggle runs exactly the recipe of the params files) and a
`kernel-metadata.json`. One more folder holds the `nbutils` wheel and a
`dataset-metadata.json`: upload it once as a dataset (`kaggle datasets create -p <folder>`),
and every notebook installs nbutils from it, with internet off if the model and data are
Kaggle inputs too. Settings that are not notebook parameters (user name, dataset slugs) come
from `[tool.nbutils.kaggle]` in pyproject.toml and $KAGGLE_USERNAME.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tools import runner

KAGGLE_INPUT = "/kaggle/input/"
# Kaggle's server refuses a longer kernel title with a bare `500` (kaggle-cli pull request 179;
# Kaggle's own learntools truncates titles for this reason). The client does not check it.
MAX_TITLE = 50


class KaggleConfigError(ValueError):
    """A Kaggle setting is missing or does not fit the parameters."""


@dataclass
class KaggleSettings:
    username: str
    repository: str
    wheels_dataset: str = "nbutils-wheels"
    enable_gpu: bool = True
    cpu_notebooks: list = field(default_factory=list)  # notebooks that train nothing on a GPU
    datasets: dict = field(default_factory=dict)  # input folder -> owner/slug
    competitions: dict = field(default_factory=dict)  # notebook -> competition slug


def load_settings(root: Path, environ: dict | None = None) -> KaggleSettings:
    environ = os.environ if environ is None else environ
    tool = tomllib.loads((root / "pyproject.toml").read_text()).get("tool", {}).get("nbutils", {})
    kaggle = dict(tool.get("kaggle", {}))
    username = environ.get("KAGGLE_USERNAME") or kaggle.pop("username", None)
    kaggle.pop("username", None)
    if not username:
        raise KaggleConfigError("no Kaggle user name: set $KAGGLE_USERNAME (as for the Kaggle CLI) "
                                "or `username` under [tool.nbutils.kaggle] in pyproject.toml")
    if "repository" not in tool:
        raise KaggleConfigError("no `repository` under [tool.nbutils] in pyproject.toml")
    return KaggleSettings(username=username, repository=tool["repository"], **kaggle)


def install_cell(repository: str) -> str:
    """The first code cell of every notebook: make `nbutils` importable wherever it runs."""
    return f'''# Make nbutils importable: locally the project's venv has it; on Kaggle it comes from the
# attached dataset of wheels (works with internet off); on Colab from the repository.
import glob, importlib.util, os, subprocess, sys

if importlib.util.find_spec("nbutils") is None:
    _wheels = sorted(glob.glob(os.environ.get("NBUTILS_KAGGLE_ROOT", "/kaggle") + "/input/*/nbutils-*.whl"))
    if _wheels:
        _source = ["--no-index", "--find-links", os.path.dirname(_wheels[-1]), "nbutils"]
    else:
        _source = ["nbutils @ git+{repository}"]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *_source], check=True)
    importlib.invalidate_caches()  # let this running kernel see the new package'''


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def kernel_title(project_name: str) -> str:
    """`LLM instruction_tune llama2_13b_fsdp_qlora`: the longest project name fits in 50 (with
    the earlier prefix `LLM notebooks` it did not); a longer one is an error here rather than
    the server's bare 500."""
    title = f"LLM {project_name.replace('/', ' ')}"
    if len(title) > MAX_TITLE:
        raise KaggleConfigError(f"{project_name}: Kaggle kernel title {title!r} is {len(title)} characters, "
                                f"Kaggle accepts at most {MAX_TITLE}: shorten the parameter file's name")
    return title


def kernel_id(project_name: str, settings: KaggleSettings) -> str:
    return f"{settings.username}/{slugify(kernel_title(project_name))}"


def read_projects(needs: list[str], parameters: dict) -> list[str]:
    """The projects among `needs` (its notebook's `needs`) whose outputs a run reads: those its
    `runs` parameter names, where it has one (the ensemble combines only the runs it lists)."""
    runs = parameters.get("runs")
    return [n for n in needs if n.rsplit("/", 1)[-1] in runs] if runs else list(needs)


def kernel_metadata(project: runner.Project, parameters: dict, settings: KaggleSettings,
                    kernel_sources: list[str] = ()) -> dict:
    """`kernel_sources`: the projects whose kernels' outputs this one may read (its notebook's
    `needs`); Kaggle attaches the outputs of those it reads under /kaggle/input."""
    notebook = project.notebook.stem
    title = kernel_title(project.name)
    datasets = [f"{settings.username}/{settings.wheels_dataset}"]
    competitions = [settings.competitions[notebook]] if notebook in settings.competitions else []
    needs_internet = []
    for key, value in parameters.items():
        if not isinstance(value, str) or not value.startswith(KAGGLE_INPUT):
            if key in ("model_name", "data_source"):
                needs_internet.append(key)  # a hub id: downloaded at run time
            continue
        folder = value[len(KAGGLE_INPUT):].split("/", 1)[0]
        if folder in settings.datasets:
            datasets.append(settings.datasets[folder])
        elif folder not in competitions:
            raise KaggleConfigError(
                f"{project.name}: {key}={value!r} reads Kaggle input folder {folder!r}, but no dataset "
                f"provides it: add `{folder} = \"owner/slug\"` under [tool.nbutils.kaggle.datasets] "
                "in pyproject.toml")
    return {
        "id": kernel_id(project.name, settings),
        "title": title,
        "code_file": project.notebook.name,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": settings.enable_gpu and notebook not in settings.cpu_notebooks,
        "enable_internet": bool(needs_internet),
        "dataset_sources": sorted(set(datasets)),
        "competition_sources": competitions,
        "kernel_sources": [kernel_id(name, settings) for name in read_projects(kernel_sources, parameters)],
        "model_sources": [],
    }


def build_wheel(root: Path, out: Path) -> Path:
    """The nbutils wheel, built from a clean copy of the package's sources.

    Built in place, setuptools reuses `build/lib` and a module moved or deleted since the last
    build would still ship; a copy of just pyproject.toml, the README and `nbutils/` (caches
    left out) has no such leftovers.
    """
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("nbutils-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="nbutils-wheel-") as source:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, Path(source) / name)
        shutil.copytree(root / "nbutils", Path(source) / "nbutils",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--no-build-isolation", "--wheel-dir", str(out), source], check=True)
    return next(out.glob("nbutils-*.whl"))


def wheels_dataset(root: Path, out: Path, settings: KaggleSettings) -> Path:
    folder = out / settings.wheels_dataset
    build_wheel(root, folder)
    # The notebooks themselves, for `num_processes` > 1: nbutils.parallel.launch runs them in each process.
    notebooks = folder / "notebooks"
    shutil.rmtree(notebooks, ignore_errors=True)
    notebooks.mkdir()
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        shutil.copy2(notebook, notebooks / notebook.name)
    metadata = {"title": "nbutils wheels", "id": f"{settings.username}/{settings.wheels_dataset}",
                "licenses": [{"name": "apache-2.0"}]}
    (folder / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def prepare_project(project: runner.Project, profile: str, out: Path, settings: KaggleSettings,
                    overrides: dict | None = None, kernel_sources: list[str] = ()) -> Path:
    import nbformat

    from tools.lab import with_values

    parameters = runner.project_parameters(project, profile, f"outputs/{profile}/{project.name}",
                                           overrides)
    folder = out / project.name.replace("/", "-")
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(with_values(project.notebook, parameters, f"The {profile} profile's values "
                               f"(params/{project.notebook.stem}/), written in by `make kaggle`: edit them here."),
                   folder / project.notebook.name)
    metadata = kernel_metadata(project, parameters, settings, kernel_sources)
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def build_bundles(root: Path, out: Path, profile: str = "full", settings: KaggleSettings | None = None,
                  names: list[str] | None = None, overrides: dict | None = None) -> list[Path]:
    settings = settings or load_settings(root)
    projects = runner.discover(root, profile)
    if profile != "smoke":  # every smoke project promises a runnable counterpart
        missing = sorted({p.name for p in runner.discover(root, "smoke")} - {p.name for p in projects})
        if missing:
            raise KaggleConfigError(f"no {profile} parameters for: {', '.join(missing)} "
                                    f"(add params/<notebook>/{profile}.yaml or {profile}/<variant>.yaml)")
    needs = runner.dependencies(projects)  # kernels whose outputs a kernel reads
    if names:
        projects = runner.select(projects, names)
    ids = [kernel_id(p.name, settings) for p in projects]
    if len(set(ids)) < len(ids):  # one push would overwrite the other's kernel
        clash = sorted(p.name for p, i in zip(projects, ids) if ids.count(i) > 1)
        raise KaggleConfigError(f"these projects get the same Kaggle kernel id: {', '.join(clash)}")
    folders = [wheels_dataset(root, out, settings)]
    folders += [prepare_project(p, profile, out, settings, overrides, needs[p.name]) for p in projects]
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kaggle", description=__doc__.splitlines()[0])
    parser.add_argument("projects", nargs="*", help="project names (default: all of the profile)")
    parser.add_argument("--profile", default="full")
    parser.add_argument("--root", default=".")
    parser.add_argument("--out", default="outputs/kaggle")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        folders = build_bundles(root, Path(args.out).resolve(), args.profile, names=args.projects)
    except KaggleConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder in folders:
        print(folder)
    print("push with: kaggle datasets create -p <wheels folder>; kaggle kernels push -p <project folder>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
