"""Every notebook reads as its recipe: install, parameters, one set-up cell, then the data.

The set-up cell's one call (`nb.run.start`) checks the parameters, quiets known noise, launches
the processes of a multi-process run and sets the run up, before anything imports transformers
or torch. Multi-process work is that launch and one call on each Trainer (`nb.parallel.prepare`):
no cell passes the strategy around or guards its writes. The TrainingArguments that decide the
recipe are written in the notebook; only infrastructure comes from `run.training_arguments`."""

import ast
import re

import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
TRAINING = [n for n in NOTEBOOKS if n != "detect_ensemble"]
# Multi-process wiring that belongs in nbutils, not in a cell.
WIRING = re.compile(r"\b(parallel\.(?!prepare\(trainer\))\w+|launch\.\w+|is_main_process|distributed|num_processes)\b")
HEAVY = re.compile(r"^\s*(import torch|from torch|from transformers|import transformers|from trl|from peft)", re.M)
RECIPE_ARGUMENTS = ("learning_rate=", "num_train_epochs=", "eval_strategy=", "save_strategy=")


def code_cells(notebook: str) -> list[tuple[str, list[str]]]:
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    return [(c.source, c.metadata.get("tags", [])) for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_install_parameters_set_up_then_data(notebook):
    cells = code_cells(notebook)
    assert "find_spec(\"nbutils\")" in cells[0][0], "the first code cell installs nbutils where it is missing"
    assert "parameters" in cells[1][1], "the second is the parameters cell"
    set_up = cells[2][0]
    assert "run = nb.run.start(globals()" in set_up
    assert not HEAVY.search(set_up), "the set-up cell launches processes before torch is imported"
    assert not any(HEAVY.search(source) for source, _ in cells[:2])
    data = cells[3][0]
    assert re.search(r"\b(load_splits|load_table|load_runs|load_instructions|load_examples|load_dataset)\(", data), (
        "the cell after set-up touches the data")


@pytest.mark.parametrize("notebook", TRAINING)
def test_set_up_checks_the_local_inputs(notebook):
    set_up = code_cells(notebook)[2][0]
    inputs = ast.literal_eval(re.search(r"inputs=(\([^)]*\))", set_up).group(1))
    assert {"data_source", "model_name"} <= set(inputs)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_multi_process_work_is_the_launch_and_one_call_on_the_trainer(notebook):
    cells = [source for source, tags in code_cells(notebook) if "parameters" not in tags]
    wiring = [(i, m.group(0)) for i, source in enumerate(cells) for m in WIRING.finditer(source)
              if not source[:m.start()].rsplit("\n", 1)[-1].lstrip().startswith("#")]
    assert not wiring, f"multi-process wiring in the cells: {wiring}"
    # A Trainer class chosen at run time (detect_ai_text's `trainer_class`) is a Trainer too.
    trainers = sum(len(re.findall(r"\b(?:\w*Trainer|trainer_class)\(", s)) for s in cells)
    assert sum(s.count("nb.parallel.prepare(trainer)") for s in cells) == trainers


@pytest.mark.parametrize("notebook", [n for n in TRAINING if n != "finetuning_strategies"])
def test_the_training_arguments_that_decide_the_recipe_are_in_the_notebook(notebook):
    """The strategies study builds one set of arguments per strategy (nbutils.tasks.strategies)."""
    code = "\n".join(source for source, _ in code_cells(notebook))
    assert "run.training_arguments(" in code and "nb.run.setup.training_arguments" not in code
    call = code[code.index("run.training_arguments("):]
    for argument in RECIPE_ARGUMENTS:
        assert argument in call, f"{argument} is not written in the notebook"
