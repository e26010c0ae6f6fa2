"""Notebook hygiene: stored without outputs, one title, a tagged parameters cell, a kernel."""

import subprocess

import nbformat
import pytest

from conftest import ROOT

TRACKED = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
NOTEBOOKS = sorted(set(TRACKED) | {str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb")})


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(ROOT / path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path}: a code cell has outputs (store notebooks stripped)"
            assert cell.execution_count is None, f"{path}: a code cell has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_reads_like_a_tutorial(path):
    nb = nbformat.read(ROOT / path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert nb.metadata.kernelspec.name == "python3", "Kaggle and Colab expect the python3 kernel"
    # Every code cell after the parameters is introduced by markdown within two cells.
    kinds = [c.cell_type for c in nb.cells]
    for i, kind in enumerate(kinds):
        if kind == "code" and i >= 3:
            assert "markdown" in kinds[max(0, i - 3):i], f"{path}: cell {i} has no markdown before it"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_first_code_cell_installs_nbutils_where_missing(path):
    """Every notebook runs unedited on Kaggle (wheel dataset, internet off) and Colab."""
    import tomllib

    from nbutils.harness.kaggle import install_cell

    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbutils"]["repository"]
    nb = nbformat.read(ROOT / path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code.source == install_cell(repository)


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.startswith("notebooks/")])
def test_readme_has_an_open_in_colab_badge_for_each_notebook(path):
    import tomllib

    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbutils"]["repository"]
    github = repository.removeprefix("https://github.com/")
    link = f"https://colab.research.google.com/github/{github}/blob/main/{path}"
    assert link in (ROOT / "README.md").read_text()
