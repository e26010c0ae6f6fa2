"""Parameters: every params file matches its notebook (names and types), like torchtune's
config test; and a misspelt or mistyped parameter is an error, not a warning."""

import ast

import pytest
import yaml

from conftest import ROOT
from tools import runner
from nbutils.run.params import ParameterError, check_parameters, declared_parameters, notebook_parameters

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAM_FILES = sorted((ROOT / "params").rglob("*.yaml"))
PROFILES = ("smoke", "full")


def parameters_cell(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    return cells[0].source


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_every_parameter_is_annotated_documented_and_seen_by_papermill(notebook):
    source = parameters_cell(notebook)
    tree = ast.parse(source)
    assert all(isinstance(node, ast.AnnAssign) for node in tree.body), \
        "the parameters cell holds only annotated assignments (`name: type = value  # help`)"
    names = [node.target.id for node in tree.body]
    declared = declared_parameters(notebook)
    # papermill silently skips a line it cannot parse (e.g. a comment containing '=').
    assert list(declared) == names
    assert all(t in ("int", "float", "str", "bool", "list", "dict") for t in declared.values())
    for line in source.splitlines():
        if line and not line.startswith("#"):
            assert "  # " in line, f"{notebook.name}: parameter without a help comment: {line}"
    assert {"project", "profile", "output_dir"} <= set(names), "the runner sets these"


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: str(p.relative_to(ROOT / "params")))
def test_params_file_matches_its_notebook(path):
    notebook_name = path.relative_to(ROOT / "params").parts[0]
    notebook = ROOT / "notebooks" / f"{notebook_name}.ipynb"
    assert notebook.is_file(), f"{path} has no notebook {notebook}"
    values = yaml.safe_load(path.read_text())
    assert isinstance(values, dict) and values, f"{path} should be a non-empty mapping"
    check_parameters(declared_parameters(notebook), values, str(path))
    assert not {"project", "profile", "output_dir"} & set(values), "the runner sets these"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_project_resolves_to_checked_parameters(profile):
    projects = runner.discover(ROOT, profile)
    assert projects
    for project in projects:
        params = runner.project_parameters(project, profile, f"outputs/{profile}/{project.name}")
        assert params["project"] == project.name and params["profile"] == profile
        if not project.needs:  # a project built on other runs' outputs (the ensemble) trains none
            assert "model_name" in params, f"{project.name}: each project names its model"


def test_every_smoke_project_has_a_full_counterpart():
    smoke = {p.name for p in runner.discover(ROOT, "smoke")}
    full = {p.name for p in runner.discover(ROOT, "full")}
    assert smoke == full


def test_smoke_profile_stays_offline():
    """Smoke parameters point at local files only, never at a hub id."""
    for project in runner.discover(ROOT, "smoke"):
        params = runner.project_parameters(project, "smoke", "out")
        for key in ("model_name", "data_source"):
            if key in params:
                assert params[key].startswith(".cache/"), f"{project.name}: {key}={params[key]}"


def test_full_profile_keeps_remote_code_off():
    for project in runner.discover(ROOT, "full"):
        params = runner.project_parameters(project, "full", "out")
        assert params.get("trust_remote_code", False) is False


DECLARED = {"epochs": "int", "learning_rate": "float", "model_name": "str", "packing": "bool"}


def test_misspelt_parameter_is_named_with_the_valid_ones():
    with pytest.raises(ParameterError) as err:
        check_parameters(DECLARED, {"learning_rat": 0.1}, "smoke.yaml")
    message = str(err.value)
    assert "'learning_rat' (did you mean 'learning_rate'?)" in message
    assert "in smoke.yaml" in message
    assert "valid parameters: epochs, learning_rate, model_name, packing" in message


@pytest.mark.parametrize("name, value", [
    ("epochs", "2"), ("epochs", True), ("learning_rate", "1e-3"), ("packing", "yes"),
    ("model_name", 3),
])
def test_wrong_type_is_named(name, value):
    with pytest.raises(ParameterError, match=rf"{name}: expected {DECLARED[name]}"):
        check_parameters(DECLARED, {name: value})


def test_int_is_accepted_for_float():
    check_parameters(DECLARED, {"learning_rate": 1, "epochs": 3})


PARAMETERS_CELL = "epochs: int = 2  # passes\nlr: float = 0.1  # rate\n"
CHECK_CELL = "from nbutils.run.params import notebook_parameters\n\nconfig = notebook_parameters(globals())\n"


def test_in_notebook_check_catches_injected_unknown_names():
    import os

    # A Jupyter kernel: the injected cell is in the input history (`In`), the current cell last.
    namespace = {"__annotations__": {"epochs": int, "lr": float}, "epochs": 2, "lr": 0.1,
                 "In": ["", PARAMETERS_CELL, CHECK_CELL], "Out": {}, "get_ipython": print, "os": os,
                 "_oh": {}}
    assert notebook_parameters(namespace) == {"epochs": 2, "lr": 0.1}
    namespace["lrr"] = 0.5  # what papermill injects for a misspelt `lrr: 0.5`
    namespace["In"] = ["", PARAMETERS_CELL, "# Parameters\nepochs = 3\nlrr = 0.5\n", CHECK_CELL]
    with pytest.raises(ParameterError, match="'lrr' \\(did you mean 'lr'\\?\\)"):
        notebook_parameters(namespace)
    namespace["In"][2] = "# Parameters\nepochs = 3\n"
    namespace["epochs"] = "two"
    with pytest.raises(ParameterError, match="epochs: expected int, got str"):
        notebook_parameters(namespace)


def test_script_check_catches_injected_unknown_names():
    # The notebook as a script (accelerate launch): no input history, only the names so far.
    namespace = {"__annotations__": {"epochs": int, "lr": float}, "epochs": 2, "lr": 0.1, "lrr": 0.5}
    with pytest.raises(ParameterError, match="'lrr'"):
        notebook_parameters(namespace)
    del namespace["lrr"]
    assert notebook_parameters(namespace) == {"epochs": 2, "lr": 0.1}


def test_in_notebook_check_accepts_a_kernel_that_already_ran_the_notebook():
    """Run All a second time: the globals hold every later cell's names (the error was
    `unknown parameter(s): 'config' 'env' 'run_dir' ...`); only the injected cell counts."""
    import pathlib

    injected = "# Parameters\nepochs = 3\n"
    first_run = ["", PARAMETERS_CELL, injected, CHECK_CELL, "run_dir = pathlib.Path('x')\nprecision_flags = {}"]
    namespace = {"__annotations__": {"epochs": int, "lr": float}, "epochs": 3, "lr": 0.1,
                 "config": {"epochs": 3, "lr": 0.1}, "run_dir": pathlib.Path("x"), "precision_flags": {},
                 "hf_token": None, "pathlib": pathlib,
                 "In": first_run + [PARAMETERS_CELL, injected, CHECK_CELL]}
    assert notebook_parameters(namespace) == {"epochs": 3, "lr": 0.1}
    # A misspelt name fixed in the injected cell no longer counts, though it is still defined.
    namespace["lrr"] = 0.5
    namespace["In"] = first_run + [PARAMETERS_CELL, "# Parameters\nlrr = 0.5\n", CHECK_CELL,
                                   PARAMETERS_CELL, "# Parameters\nlr = 0.5\n", CHECK_CELL]
    namespace["lr"] = 0.5
    assert notebook_parameters(namespace) == {"epochs": 3, "lr": 0.5}
