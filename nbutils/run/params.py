"""Notebook parameters: declared once, in the notebook's tagged `parameters` cell, and checked.

Every notebook declares its parameters with a type and a comment
(`epochs: int = 2  # passes over the training set`), which is what `papermill --help-notebook`
shows. Papermill itself only *warns* about a parameter the notebook does not declare, so a
misspelt name would silently run with the default. Here it is an error, raised twice over:
by the runner before a kernel starts, and inside the notebook (the cell after the parameters)
for runs started any other way (papermill's CLI, Kaggle's "Save & Run All").
"""

from __future__ import annotations

import inspect
from difflib import get_close_matches
from typing import Mapping

# Names IPython puts into a fresh kernel's namespace; anything else public is a parameter.
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


class ParameterError(ValueError):
    """A parameter the notebook does not declare, or a value of the wrong type."""


def _matches(value, type_name: str) -> bool:
    expected = _TYPES.get(type_name)
    if expected is None:  # an annotation we do not check (papermill could not parse it)
        return True
    if isinstance(value, bool) and expected is not bool:
        return False  # YAML `true` is no number
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def check_parameters(declared: Mapping[str, str], given: Mapping[str, object],
                     source: str = "parameters") -> None:
    """Raise ParameterError unless every name in `given` is declared, with a value of its type.

    `declared` maps each parameter name to its type name ("int", "float", "str", ...).
    """
    unknown = [name for name in given if name not in declared]
    if unknown:
        lines = []
        for name in unknown:
            close = get_close_matches(name, list(declared), n=1)
            lines.append(f"  {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ParameterError(f"unknown parameter(s) in {source}:\n" + "\n".join(lines) +
                             "\nvalid parameters: " + ", ".join(sorted(declared)))
    wrong = [f"  {name}: expected {declared[name]}, got {type(value).__name__} {value!r}"
             for name, value in given.items() if not _matches(value, declared[name])]
    if wrong:
        raise ParameterError(f"parameter(s) of the wrong type in {source}:\n" + "\n".join(wrong))


def _is_code(value) -> bool:
    """Modules, functions and classes imported so far are not parameters."""
    return inspect.ismodule(value) or inspect.isroutine(value) or inspect.isclass(value)


# Papermill's injected cell starts with this comment (translators' `codify(..., "Parameters")`).
_INJECTED_CELL = "# Parameters"


def _assigned_names(source: str) -> list[str] | None:
    """The names a cell of plain assignments sets, or None where it is anything else."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names = []
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
            names += [t.id for t in statement.targets]
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            names.append(statement.target.id)
        else:
            return None
    return names


def injected_names(history: list[str]) -> list[str]:
    """The names set by the latest papermill-injected parameters cell in a kernel's input
    history (IPython's `In`), or none where no such cell ran."""
    for source in reversed(history):
        if source.lstrip().startswith(_INJECTED_CELL):
            names = _assigned_names(source)
            if names is not None:
                return names
    return []


def notebook_parameters(namespace: Mapping[str, object]) -> dict[str, object]:
    """Check and return a notebook's parameters: call as `notebook_parameters(globals())`.

    Call it in the cell right after the parameters cell. The declared parameters are the
    annotated names (`__annotations__`, set only by the parameters cell). The names checked
    against them are those papermill injected:

    - in a Jupyter kernel, the assignments of the injected cell (`# Parameters`), read from the
      kernel's input history. So a kernel that already ran the notebook (Run All twice, one
      cell again), whose globals hold every later cell's names, passes the check, and a name
      fixed in the injected cell no longer counts even though the old one is still defined;
    - elsewhere (the notebook converted to a script, `accelerate launch`), every public name
      that is not code: nothing else has run yet at this point.
    """
    annotations = namespace.get("__annotations__", {})
    declared = {name: getattr(t, "__name__", str(t)) for name, t in annotations.items()}
    values = {name: namespace[name] for name in declared}
    history = namespace.get("In")
    if isinstance(history, list):  # IPython's input history
        injected = {name: namespace[name] for name in injected_names(history[:-1])
                    if name in namespace and name not in declared}
    else:
        injected = {name: value for name, value in namespace.items()
                    if not name.startswith("_") and name not in _KERNEL_NAMES and name not in declared
                    and not _is_code(value)}
    check_parameters(declared, {**values, **injected}, "this notebook's parameters")
    return values


def declared_parameters(notebook_path) -> dict[str, str]:
    """A notebook's declared parameters and their type names, read with papermill."""
    import papermill

    inspected = papermill.inspect_notebook(str(notebook_path))
    if not inspected:
        raise ParameterError(f"{notebook_path} has no cell tagged 'parameters'")
    return {name: info["inferred_type_name"] for name, info in inspected.items()}
