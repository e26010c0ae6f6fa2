"""No private parts of other libraries: nbutils never touches another package's underscore
names (a single leading underscore, not a dunder). Such a name is no promise: transformers,
accelerate, datasets and optuna rename or drop them between minor versions, and the notebooks
that rely on nbutils would break with nobody noticing.

A static scan (`ast`) of every module of the package. It finds another package's private name in
- `from x import _y` and a private module segment (`torch.distributed._composable`);
- an attribute read or written: `obj._attr`;
- `getattr` / `setattr` / `hasattr` / `delattr` with a private name as a string, and any other
  string that is a private name (`vars(obj)["_attr"]`, `attrgetter("_attr")`): writing the
  name as a string is no way around the rule;
- a private method defined in a subclass of another package's class and never called by
  nbutils: an override of that package's private hook (the Trainer's `_get_train_sampler`).
A name that nbutils defines itself is its own: its functions, classes and methods, module
globals, attributes set on `self` / `cls`, `__slots__` entries, parameters, import aliases.
Where another package offers no public way at all, the use is listed in `NO_PUBLIC_WAY`, with
why, and counted: the list is the whole of what nbutils reads that is not public.
"""

from __future__ import annotations

import ast
import textwrap

import pytest

from conftest import ROOT

PACKAGE = ROOT / "nbutils"

# Private by its name, public by its documentation: `os._exit` is the documented way for a forked
# child to end at once, without running the parent's exit handlers or flushing its buffers
# (https://docs.python.org/3/library/os.html#os._exit).
DOCUMENTED = {"os._exit"}

# Another package's private names that nbutils reads because that package offers no public way,
# with how many uses: (file, what the scan reports) -> uses. Each is named in the module's code and
# must be taken off here once a public way exists (the test fails while a listed use is gone).
# - transformers 5.24 keeps the attention implementation a model runs only in the private
#   `config._attn_implementation`: `from_pretrained(attn_implementation=...)` and
#   `set_attn_implementation()` set it, nothing public reads it (`config.to_dict()` drops it);
#   TRL 1.16 reads it the same way. nbutils.batching names it in its records' batching reason.
NO_PUBLIC_WAY = {("nbutils/batching.py", "the name '_attn_implementation' as a string"): 1}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node) -> str | None:
    """`a.b.c` for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def own_names(trees) -> set[str]:
    """Every name the scanned code defines itself."""
    own = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
            elif isinstance(node, ast.alias):
                own.add((node.asname or node.name).split(".")[0])
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                own.add(node.attr)
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
                own.update(c.value for c in ast.walk(node.value)
                           if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return own


def _overrides(trees, classes: set[str]) -> list[tuple[ast.AST, str]]:
    """Private methods of classes with another package's base that nbutils itself never calls
    or reads (`x._name`, `getattr(x, "_name")`): only that package's code would call them."""
    used = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                used.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                used.add(node.value)
    found = []
    for tree in trees:
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            foreign = [b for b in cls.bases if (_dotted(b) or "").split(".")[-1] not in classes]
            if not foreign:
                continue
            for method in cls.body:
                if (isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) and private(method.name)
                        and method.name not in used):
                    found.append((method, f"{cls.name}.{method.name} overrides a private method of "
                                          f"{', '.join(_dotted(b) or '?' for b in foreign)}"))
    return found


def private_uses(sources: dict[str, str], package: str = "nbutils") -> list[str]:
    """`path:line: what` for each use of another package's private name in `sources`
    ({path: Python source}), the package's own names being those the sources define."""
    trees = {path: ast.parse(text, filename=path) for path, text in sources.items()}
    own = own_names(trees.values())
    classes = {n.name for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.ClassDef)}
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            hit = None
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] != package:
                names = [a.name for a in node.names if private(a.name)]
                segments = [s for s in node.module.split(".") if private(s)]
                if names or segments:
                    hit = f"from {node.module} import {', '.join(a.name for a in node.names)}"
            elif isinstance(node, ast.Import):
                hit = next((f"import {a.name}" for a in node.names if a.name.split(".")[0] != package
                            and any(private(s) for s in a.name.split("."))), None)
            elif isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in own:
                if _dotted(node) not in DOCUMENTED:
                    hit = f"attribute {node.attr}" + (f" ({_dotted(node)})" if _dotted(node) else "")
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier()
                  and private(node.value) and node.value not in own):
                hit = f"the name {node.value!r} as a string"
            if hit:
                found.append(f"{path}:{node.lineno}: {hit}")
        found += [f"{path}:{node.lineno}: {what}" for node, what in _overrides([tree], classes)]
    return sorted(set(found))


def package_sources() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))
            if "__pycache__" not in p.parts}


def test_nbutils_touches_no_private_name_of_another_package():
    found = private_uses(package_sources())
    counts = {known: 0 for known in NO_PUBLIC_WAY}
    unlisted = []
    for hit in found:
        path, _, what = hit.split(":", 2)
        key = (path, what.strip())
        if key in counts:
            counts[key] += 1
        else:
            unlisted.append(hit)
    assert not unlisted, "another package's private names (use its public API):\n" + "\n".join(unlisted)
    assert counts == NO_PUBLIC_WAY, "the uses listed in NO_PUBLIC_WAY changed: update the list"


def _uses(code: str) -> list[str]:
    return private_uses({"snippet.py": textwrap.dedent(code)})


@pytest.mark.parametrize("code, expected", [
    ('from accelerate.state import PartialState\nPartialState._shared_state["x"] = 1\n', "_shared_state"),
    ("def f(trainer):\n    return trainer._get_train_sampler\n", "_get_train_sampler"),
    ("def f(trainer, s):\n    trainer._get_train_sampler = s\n", "_get_train_sampler"),
    ('def f(config):\n    return getattr(config, "_attn_implementation", None)\n', "'_attn_implementation'"),
    ('def f(d):\n    return hasattr(d, "_fingerprint")\n', "'_fingerprint'"),
    ('def f(d):\n    return vars(d)["_fingerprint"]\n', "'_fingerprint'"),
    ("from torch.distributed._composable import fully_shard\n", "torch.distributed._composable"),
    ("from transformers.modeling_utils import _load_state_dict\n", "_load_state_dict"),
    ("import torch._dynamo\n", "torch._dynamo"),
    ("import optuna\nclass S(optuna.samplers.TPESampler):\n    def _sample(self, study):\n        return 1\n",
     "S._sample overrides a private method of optuna.samplers.TPESampler"),
])
def test_the_check_finds_another_packages_private_name(code, expected):
    found = _uses(code)
    assert found and expected in "\n".join(found), found


def test_the_check_passes_the_packages_own_private_names():
    code = '''
        import os
        from nbutils.run import runtime as _runtime
        from . import _helpers
        _CACHE = {}

        def _helper(x, _scale=2):
            return x * _scale

        class _Box:
            __slots__ = ("_view_of",)

            def __init__(self):
                self._value = _helper(1)
                object.__setattr__(self, "_view_of", None)

            def _peek(self):
                return self._value, getattr(self, "_view_of")

        class Callback(SomeLibraryCallback):
            def _make(self):  # a helper of its own: called below
                return 1

            def on_step_end(self):
                return self._make()

        def leave():
            _helpers.run(_Box()._peek(), _CACHE, _runtime)
            os._exit(0)  # documented public API
    '''
    assert _uses(code) == []
