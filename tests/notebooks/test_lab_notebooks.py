"""Exploring in JupyterLab: a notebook prepared by `make lab RUN=...` runs in a kernel started in
its own folder, twice in the same kernel (Run All twice); and the session's executed smoke
notebooks carry none of the known noise."""

import json
import os

import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))

# Lines that used to appear in every run (issue 17); each is filtered at its source now.
KNOWN_NOISE = ("Failed to load CPU gemm_4bit_forward from kernels-community", "LOAD REPORT",
               "mtime may not be reliable on this filesystem", "Kernel is running over TCP without encryption",
               "`is_gradient_checkpointing` is deprecated")


def _output_texts(nb) -> list[str]:
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts.append(output.get("text", ""))
            elif output.get("output_type") == "error":
                texts.append("\n".join(output.get("traceback", [])))
            else:
                texts += [v if isinstance(v, str) else json.dumps(v) for v in output.get("data", {}).values()]
    return texts


def test_prepare_writes_the_values_into_the_parameters_cell_with_absolute_paths(cache, tmp_path):
    """The profile's values are written into the parameters cell itself: no injected cell below it
    silently overrides what a learner edits there. The copy and its run folder are Lab's own."""
    from tools import lab

    copy = lab.prepare("detect_ai_text/bert", "smoke", ROOT, tmp_path, {"epochs": 1})
    assert copy == tmp_path / "smoke-lab" / "detect_ai_text" / "bert.ipynb"
    nb = nbformat.read(copy, as_version=4)
    assert nb.metadata.kernelspec.name == "llm-notebooks"
    assert nb.metadata.kernelspec.display_name == "Python (llm-notebooks)"
    assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert f"output_dir: str = '{tmp_path / 'smoke-lab' / 'detect_ai_text' / 'bert'}'  # model" in cell.source
    assert f"data_source: str = '{ROOT / '.cache/sample-data/daigt_v2_train.csv'}'  #" in cell.source
    assert f"model_name: str = '{ROOT / '.cache/tiny-models/bert'}'  #" in cell.source
    assert "epochs: float = 1  # passes over the training set" in cell.source
    assert 'text_column: str = "text"  #' in cell.source  # not in the profile: the default, untouched
    namespace = {}
    exec(cell.source, namespace)  # still a cell of plain annotated assignments
    assert namespace["epochs"] == 1 and namespace["__annotations__"]["epochs"] is float


def test_write_values_keeps_annotations_comments_and_multiline_values():
    from tools import lab

    source = ('a: int = 1  # one\nb: dict = {\n    "x": 1,\n}  # a mapping\nc = "keep"\n')
    written = lab.write_values(source, {"a": 5, "b": {"y": [1, 2]}})
    assert written == 'a: int = 5  # one\nb: dict = {\'y\': [1, 2]}  # a mapping\nc = "keep"\n'


def test_absolute_paths_leave_names_and_hub_ids_alone(tmp_path):
    from tools import lab

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("a\n")
    got = lab.absolute_paths({"output_dir": "outputs/smoke/p", "data_source": "data/x.csv",
                              "model_name": "google/flan-t5-base", "text_column": "text",
                              "extra_sources": [{"path": "data/x.csv", "name": "extra"}], "epochs": 2},
                             tmp_path)
    assert got == {"output_dir": str(tmp_path / "outputs/smoke/p"), "data_source": str(tmp_path / "data/x.csv"),
                   "model_name": "google/flan-t5-base", "text_column": "text",
                   "extra_sources": [{"path": str(tmp_path / "data/x.csv"), "name": "extra"}], "epochs": 2}


def test_lab_runs_smoke_offline_and_live():
    from tools import lab

    env = lab.lab_environment("smoke", {"PATH": "/bin", "NBUTILS_HEADLESS": "1", "PYTHONPATH": "/x"}, ROOT)
    assert env["HF_HUB_OFFLINE"] == "1" and "NBUTILS_HEADLESS" not in env
    # as headless smoke runs: the kernels' processes can shard (FSDP) over CPUs
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT / "tests" / "fixtures" / "fsdp_on_cpu"), "/x"]
    full = lab.lab_environment("full", {"PATH": "/bin"}, ROOT)
    assert "HF_HUB_OFFLINE" not in full and "PYTHONPATH" not in full


@pytest.mark.parametrize("uid", [0, 1000])
def test_lab_allows_root_only_as_root(uid, monkeypatch):
    """As root (Kaggle, Colab, most containers) Lab stops with `Running as root is not
    recommended. Use --allow-root`."""
    from tools import lab

    monkeypatch.setattr(lab.os, "geteuid", lambda: uid)
    assert ("--allow-root" in lab.lab_command(ROOT / "notebooks" / "x.ipynb", ROOT)) is (uid == 0)


@pytest.mark.slow  # starts make (a dry run: nothing is built or started)
def test_make_lab_without_a_project_allows_root_as_root():
    """`make lab` without RUN starts jupyter itself: its command line for this user (a dry run)."""
    import os
    import subprocess

    dry = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(line for line in dry.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in line.split()) is (os.geteuid() == 0)


@pytest.mark.slow
def test_a_prepared_notebook_runs_twice_then_edited_in_one_kernel_started_in_its_folder(cache, tmp_path):
    """As in JupyterLab: the kernel starts in the notebook's folder; Run All, then Run All again
    in the same kernel: both succeed, and the second says it trains nothing. Then the learner
    edits the learning rate in the parameters cell and runs all again: it trains afresh with
    that value, and the record and the checkpoints' identity both say so. Also: TensorBoard event
    files in the run folder, a model card, no nested folders, the headless run folder untouched."""
    from nbclient import NotebookClient

    from nbutils.run import checkpoints, record
    from tools import lab

    copy = lab.prepare("detect_ai_text/bert", "smoke", ROOT, tmp_path,
                       {"epochs": 1, "max_samples": 300, "report_to": "tensorboard"})
    folder = copy.with_suffix("")  # the run folder beside the copy
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(nb, kernel_name="llm-notebooks", timeout=600,
                            resources={"metadata": {"path": str(copy.parent)}})
    runs = []
    with client.setup_kernel():
        for attempt in range(3):
            if attempt == 2:  # the learner's edit, in the visible parameters cell
                cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
                cell.source = lab.write_values(cell.source, {"learning_rate": 1.0e-3})
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)  # raises on the first cell that fails
            runs.append("\n".join(_output_texts(nb)))
            if attempt == 0:
                first_record = record.read_record(folder)
    first, second, edited = runs
    assert "training from the start" in first and "NOTHING IS TRAINED" not in first
    assert "NOTHING IS TRAINED" in second and "resume = False" in second
    assert "learning_rate 0.002 -> 0.001" in edited and "NOTHING IS TRAINED" not in edited
    final = record.read_record(folder)
    identity = checkpoints.read_identity(folder)
    assert final["config"]["learning_rate"] == identity["parameters"]["learning_rate"] == 1.0e-3
    assert final["train"]["runtime_s"] > 0 and "resumed_finished" not in final["train"]
    assert first_record["config"]["learning_rate"] != 1.0e-3
    assert not folder.with_name(folder.name + ".incomplete").exists()
    assert not (tmp_path / "smoke").exists()  # the headless runs' folder: Lab never writes there
    assert not (copy.parent / "outputs").exists() and not (copy.parent / "notebooks").exists()
    assert list((folder / "checkpoints").rglob("events.out.tfevents.*")), "no TensorBoard event files"
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "model" / "README.md")
    assert {r.metric_type for r in card.data.eval_results} >= {"roc_auc", "accuracy"}
    for noise in KNOWN_NOISE:
        assert noise not in first + second


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_executed_smoke_notebooks_carry_none_of_the_known_noise(smoke_run, notebook):
    code, outputs = smoke_run(notebook)
    executed = [p for p in outputs.rglob(f"{notebook}.ipynb")]
    assert executed, f"no executed {notebook} notebook under {outputs}"
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(_output_texts(nb))
        for noise in KNOWN_NOISE:
            assert noise not in text, f"{path.relative_to(outputs)}: {noise!r}"
        widgets = [o for c in nb.cells for o in c.get("outputs", [])
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert not widgets, f"{path.relative_to(outputs)}: progress widgets, frozen in a stored notebook"



