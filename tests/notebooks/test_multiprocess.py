"""Scaling out: the detection notebook trains in two processes (DDP over gloo on a CPU), started
by the runner. Started from inside the notebook (`num_processes: 2`, as on Kaggle's two T4s):
tests/harness/test_kaggle.py::test_prepared_notebook_runs_in_a_simulated_kaggle."""

from conftest import ROOT
from nbutils.run import checkpoints, record
from tools import runner


def test_two_process_run_trains_and_records_two_processes(cache, tmp_path, smoke_run):
    project = runner.select(runner.discover(ROOT, "smoke"), ["detect_ai_text/bert"])[0]
    result = runner.run_project(project, "smoke", ROOT, tmp_path, nproc=2)
    assert result.status == "ok", result.error
    rec = result.record
    assert rec["train"]["processes"] == 2
    log = (tmp_path / "smoke" / "detect_ai_text" / "bert" / "launch.log").read_text()
    assert "process group is initialized, but parallel_mode" not in log, "processes must join DDP"
    single = record.read_record(smoke_run("detect_ai_text")[1] / "detect_ai_text" / "bert")
    assert single["train"]["processes"] == 1
    # In line with the single-process run of the same recipe on the same split.
    assert rec["data"] == single["data"]
    assert rec["metrics"]["accuracy"] >= 0.75 and rec["metrics"]["roc_auc"] >= 0.85
    assert abs(rec["metrics"]["roc_auc"] - single["metrics"]["roc_auc"]) < 0.1

    # The same folder, now sharded (FSDP): the DDP checkpoints are not resumed (they were trained
    # in another layout, and loading them as FSDP crashed), and they stay whole until this run
    # finishes and replaces them. The record and the checkpoints' identity say FSDP.
    run_dir = tmp_path / "smoke" / "detect_ai_text" / "bert"
    assert checkpoints.read_identity(run_dir)["layout"] == {"processes": 2, "strategy": "ddp"}
    sharded = runner.run_project(project, "smoke", ROOT, tmp_path, {"distributed": "fsdp"}, nproc=2)
    assert sharded.status == "ok", sharded.error
    log = (run_dir / "launch.log").read_text()
    assert "holds an earlier run; training afresh" in log and "strategy 'ddp' -> 'fsdp'" in log
    assert "resuming from" not in log
    assert checkpoints.read_identity(run_dir)["layout"] == {"processes": 2, "strategy": "fsdp"}
    assert sharded.record["train"]["distributed"]["strategy"] == "fsdp"
    assert sharded.record["config"]["distributed"] == "fsdp"
