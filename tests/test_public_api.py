"""The package's public surface: `nbutils.__all__`, the module lines of its docstring and the
README's module map all agree with the tree, and `import nbutils` stays instant."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "nbutils"
# A README map row: | `nbutils/<path>.py` | what it is for |
README_ROW = re.compile(r"^\|\s*`(nbutils/[\w/]+\.py)`\s*\|", re.MULTILINE)
# An __init__ docstring line: four spaces, the dotted module name (under nbutils), its purpose.
INIT_LINE = re.compile(r"^    ([a-z_][\w.]*)\s+\S", re.MULTILINE)


def module_files(package: Path) -> set[str]:
    """Every module of the package as a repository path (`nbutils/remedies/cv.py`); package
    `__init__` files are the packages themselves, not modules with a line of their own."""
    return {f"nbutils/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def readme_map(readme: str) -> set[str]:
    section = readme.split("### The module map", 1)[1].split("\n## ", 1)[0]
    return set(README_ROW.findall(section))


def init_map(docstring: str) -> set[str]:
    """The modules the package docstring gives a line, as repository paths."""
    return {"nbutils/" + name.replace(".", "/") + ".py" for name in INIT_LINE.findall(docstring)}


def map_problems(package: Path, readme: str) -> list[str]:
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    tree, in_readme, in_init = module_files(package), readme_map(readme), init_map(docstring)
    root = package.parent
    problems = [f"{m}: no line in the README's module map" for m in sorted(tree - in_readme)]
    problems += [f"{m}: no line in nbutils/__init__.py's docstring" for m in sorted(tree - in_init)]
    problems += [f"{m}: named in the README's module map, not in the tree" for m in sorted(in_readme)
                 if not (root / m).is_file()]
    problems += [f"{m}: named in nbutils/__init__.py's docstring, not in the tree" for m in sorted(in_init)
                 if not (root / m).is_file()]
    return problems


def test_the_module_maps_name_every_module_and_only_modules_that_exist():
    assert map_problems(PACKAGE, (ROOT / "README.md").read_text()) == []


def test_a_module_added_without_a_line_fails_the_check(tmp_path):
    """The check itself: a copy of the package with one more module, and a README naming one
    that is not there."""
    copy = tmp_path / "nbutils"
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" not in path.parts:
            target = copy / path.relative_to(PACKAGE)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    (copy / "remedies" / "mixup.py").write_text('"""A new remedy."""\n')
    readme = (ROOT / "README.md").read_text().replace(
        "| `nbutils/data.py` |", "| `nbutils/sample_data.py` | (gone) |\n| `nbutils/data.py` |")
    problems = map_problems(copy, readme)
    assert "nbutils/remedies/mixup.py: no line in the README's module map" in problems
    assert "nbutils/remedies/mixup.py: no line in nbutils/__init__.py's docstring" in problems
    assert "nbutils/sample_data.py: named in the README's module map, not in the tree" in problems


def test_all_lists_the_recipe_modules_and_the_subpackages():
    import nbutils

    library = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert set(nbutils.__all__) == library | subpackages
    assert len(nbutils.__all__) == len(set(nbutils.__all__))
    for sub in ("run", "parallel", "sandbox", "remedies", "tasks"):
        package = PACKAGE / sub
        declared = __import__(f"nbutils.{sub}", fromlist=["__all__"]).__all__
        assert set(declared) == {p.stem for p in package.glob("*.py") if p.name != "__init__.py"} | {
            p.name for p in package.iterdir() if (p / "__init__.py").is_file()}


@pytest.mark.slow  # a fresh interpreter: what `import nbutils` loads, nothing imported before
def test_import_is_instant_and_modules_load_on_first_use():
    """No torch (or transformers) at `import nbutils`; `nbutils.data` and
    `nbutils.remedies.cv` work after it alone; an unknown name is an AttributeError."""
    code = ("import sys, nbutils\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
            "assert nbutils.data.__name__ == 'nbutils.data'\n"
            "assert nbutils.remedies.cv.__name__ == 'nbutils.remedies.cv'\n"
            "assert 'data' in dir(nbutils)\n"
            "try:\n    nbutils.harness_of_nothing\nexcept AttributeError as e:\n    print('ok', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


@pytest.mark.parametrize("name", __import__("nbutils").__all__)
def test_every_public_name_is_importable(name):
    import importlib.util

    assert importlib.util.find_spec(f"nbutils.{name}") is not None
