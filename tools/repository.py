"""The repository Colab installs nbutils from, set in one place: `repository` under
`[tool.nbutils]` in pyproject.toml. This writes it where it repeats: every notebook's install
cell and the README's "Open in Colab" badges.

    python -m tools.repository [--root .]      (or `make set-repository`)
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

from tools.kaggle import install_cell

GITHUB = "https://github.com/"
COLAB = "https://colab.research.google.com/github/"
# A badge's link: COLAB + owner/name + /blob/<branch>/<notebook path>.
BADGE_REPOSITORY = re.compile(re.escape(COLAB) + r"[^/\s)]+/[^/\s)]+(?=/blob/)")


def configured(root: Path) -> str:
    repository = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["nbutils"]["repository"]
    if not repository.startswith(GITHUB):  # Colab opens notebooks from GitHub only
        raise ValueError(f"[tool.nbutils] repository must be a {GITHUB}owner/name URL, got {repository!r}")
    return repository.rstrip("/")


def colab_link(repository: str, notebook: str) -> str:
    """`notebook` as a path in the repository, e.g. notebooks/detect_ai_text.ipynb."""
    return f"{COLAB}{repository.removeprefix(GITHUB)}/blob/main/{notebook}"


def rewrite(root: Path) -> list[Path]:
    """Write pyproject.toml's repository into the notebooks and the README; returns the files
    changed. Notebooks go through nbformat, keeping cell ids; stored ones have no outputs."""
    import nbformat

    repository = configured(root)
    changed = []
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")  # the install cell
        if cell.source != install_cell(repository):
            cell.source = install_cell(repository)
            nbformat.write(nb, path)
            changed.append(path)
    readme = root / "README.md"
    text = readme.read_text()
    new = BADGE_REPOSITORY.sub(COLAB + repository.removeprefix(GITHUB), text)
    if new != text:
        readme.write_text(new)
        changed.append(readme)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.repository", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="the repository root")
    root = Path(parser.parse_args(argv).root).resolve()
    try:
        changed = rewrite(root)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"repository {configured(root)}: "
          + (", ".join(str(p.relative_to(root)) for p in changed) + " rewritten" if changed else "everything agrees"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
