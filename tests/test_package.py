"""The package is what notebooks import: its imports point down its tiers (tasks -> remedies ->
library, with the library's run plumbing, multi-process and sandbox subpackages), it never
imports the harness (`tools/`) or the tests' fixtures, and the wheel carries it and nothing else."""

import ast
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "nbutils"
# A tier may import from its own tier and the tiers after it in this list, never before.
TIERS = ["tasks", "remedies", "library"]


def tier_of(module: str) -> str:
    """'nbutils.tasks.ensemble' -> 'tasks'; 'nbutils.data', 'nbutils.run.record' -> 'library'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in TIERS else "library"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def nbutils_imports(path: Path) -> set[str]:
    """Every nbutils module `path` imports (`from nbutils.x import y` counts x.y if it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("nbutils.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nbutils"):
            assert node.level == 0, f"{path}: relative import; the tiers read better absolute"
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                as_path = ROOT / Path(*candidate.split("."))
                found.add(candidate if as_path.with_suffix(".py").is_file() or as_path.is_dir()
                          else node.module)
    return found


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_the_tiers_exist_and_hold_modules():
    for tier in ("tasks", "remedies", "run", "parallel", "sandbox"):
        assert (PACKAGE / tier / "__init__.py").is_file()
        assert len(list((PACKAGE / tier).rglob("*.py"))) > 2


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_tiers(path):
    here = TIERS.index(tier_of(module_name(path)))
    upward = sorted(m for m in nbutils_imports(path) if TIERS.index(tier_of(m)) < here)
    assert not upward, (f"{module_name(path)} ({TIERS[here]}) imports {upward} from a tier above "
                        f"it; the order is {' -> '.join(TIERS)}")


def test_a_project_does_not_import_another_projects_home():
    for path in (PACKAGE / "tasks").rglob("*.py"):
        home = module_name(path).split(".")[2] if path.parent != PACKAGE / "tasks" else None
        for imported in nbutils_imports(path):
            if tier_of(imported) == "tasks" and imported.count(".") >= 2:
                assert imported.split(".")[2] == home, f"{module_name(path)} imports {imported}"


def test_the_boundary_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from nbutils.tasks import ensemble\nfrom nbutils import data\n")
    assert "nbutils.tasks.ensemble" in nbutils_imports(bad)
    assert tier_of("nbutils.tasks.ensemble") == "tasks" and tier_of("nbutils.run.record") == "library"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_package_never_imports_the_harness_or_the_fixtures(path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {m for m in imported if m.split(".")[0] in ("tools", "tests")}, module_name(path)


def test_the_wheel_carries_the_package_and_nothing_else(tmp_path):
    """The wheel `make kaggle` builds is the one notebooks install on Kaggle and Colab."""
    from tools import kaggle

    wheel = kaggle.build_wheel(ROOT, tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "nbutils/data.py" in names and "nbutils/remedies/search.py" in names
    assert "nbutils/sandbox/code_exec.py" in names
    shipped = {n for n in names if n.endswith(".py")}
    expected = {str(p.relative_to(ROOT)) for p in modules()}
    assert shipped == expected
