"""Scaling out: the detection notebook trains in two processes (DDP over gloo on a CPU)."""

import json

import nbformat

from conftest import ROOT, run_smoke_project
from nbutils.harness import runner


def test_two_process_run_trains_and_records_two_processes(cache, tmp_path, smoke_run):
    project = runner.select(runner.discover(ROOT, "smoke"), ["detect_ai_text/bert"])[0]
    result = runner.run_project(project, "smoke", ROOT, tmp_path, nproc=2)
    assert result.status == "ok", result.error
    record = result.record
    assert record["train"]["processes"] == 2
    log = (tmp_path / "smoke" / "detect_ai_text" / "bert" / "launch.log").read_text()
    assert "process group is initialized, but parallel_mode" not in log, "processes must join DDP"
    single = json.loads((smoke_run("detect_ai_text")[1] / "detect_ai_text" / "bert" / "metrics.json").read_text())
    assert single["train"]["processes"] == 1
    # In line with the single-process run of the same recipe on the same split.
    assert record["data"] == single["data"]
    assert record["metrics"]["accuracy"] >= 0.75 and record["metrics"]["roc_auc"] >= 0.85
    assert abs(record["metrics"]["roc_auc"] - single["metrics"]["roc_auc"]) < 0.1


def test_notebook_launches_its_own_processes_from_inside(cache, tmp_path, smoke_run):
    """`num_processes: 2` inside the notebook (how Kaggle's two T4s are used): the kernel forks
    two processes with accelerate.notebook_launcher, they train one DDP run, and the kernel
    shows the result and skips the cells those processes already ran."""
    result = run_smoke_project("detect_ai_text/bert", tmp_path, num_processes=2)
    assert result.status == "ok", result.error
    assert result.record["train"]["processes"] == 2
    single = json.loads((smoke_run("detect_ai_text")[1] / "detect_ai_text" / "bert" / "metrics.json").read_text())
    assert result.record["data"] == single["data"]
    assert abs(result.record["metrics"]["roc_auc"] - single["metrics"]["roc_auc"]) < 0.1
    cells = nbformat.read(result.notebook, as_version=4).cells
    launch_at = next(i for i, c in enumerate(cells) if "launch.run_in_processes" in c.source)
    shown = "".join(o.get("text", "") for o in cells[launch_at].outputs)
    assert "trained in 2 processes" in shown
    later = [c for c in cells[launch_at + 1:] if c.cell_type == "code"]
    assert later and not any(c.outputs for c in later), "the kernel ran cells the processes had run"
