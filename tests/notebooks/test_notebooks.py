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

    from tools.kaggle import install_cell

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


def test_set_repository_writes_a_fork_into_every_notebook_and_the_readme(tmp_path):
    """`make set-repository` after pointing pyproject.toml at a fork: every install cell and
    every Colab badge name the fork, and nothing else in the notebooks changes."""
    import shutil

    from tools import repository
    from tools.kaggle import install_cell

    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copy(ROOT / "README.md", tmp_path)
    original = repository.configured(ROOT)
    fork = "https://github.com/made-up-user/made-up-fork"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert pyproject.count(f'repository = "{original}"') == 1
    (tmp_path / "pyproject.toml").write_text(pyproject.replace(f'repository = "{original}"', f'repository = "{fork}"'))

    assert repository.main(["--root", str(tmp_path)]) == 0
    assert repository.configured(tmp_path) == fork
    paths = sorted((tmp_path / "notebooks").glob("*.ipynb"))
    assert len(paths) == 6
    readme = (tmp_path / "README.md").read_text()
    for path in paths:
        before = nbformat.read(ROOT / "notebooks" / path.name, as_version=4)
        after = nbformat.read(path, as_version=4)
        first = next(i for i, c in enumerate(after.cells) if c.cell_type == "code")
        assert after.cells[first].source == install_cell(fork)
        assert [c.id for c in after.cells] == [c.id for c in before.cells]
        assert [c.source for i, c in enumerate(after.cells) if i != first] == \
            [c.source for i, c in enumerate(before.cells) if i != first]
        assert all(not c.outputs and c.execution_count is None for c in after.cells if c.cell_type == "code")
        assert f"]({repository.colab_link(fork, f'notebooks/{path.name}')})" in readme
        assert original not in path.read_text()
    assert original.removeprefix("https://github.com/") not in readme
    assert readme.count("https://colab.research.google.com/github/made-up-user/made-up-fork/blob/main/") == 6
    # A second run finds everything in agreement.
    assert repository.rewrite(tmp_path) == []
