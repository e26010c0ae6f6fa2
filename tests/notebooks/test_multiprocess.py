"""Scaling out: the detection notebook trains in two processes (DDP over gloo on a CPU), started
by the runner. Started from inside the notebook (`num_processes: 2`, as on Kaggle's two T4s):
tests/harness/test_kaggle.py::test_prepared_notebook_runs_in_a_simulated_kaggle."""

import json

from conftest import ROOT
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
