"""The runner: a failing project does not stop the others, and the summary says what failed."""

import json

import nbformat
import pytest

from tools import runner

PARAMETERS = '''project: str = "toy"  # run name
profile: str = "smoke"  # profile
output_dir: str = "outputs/toy"  # run folder
score: float = 0.5  # the metric this toy run reports
fail: bool = False  # raise instead of finishing'''

BODY = '''from nbutils.run import record
if fail:
    raise RuntimeError("this toy project fails on purpose")
rec = record.make_record(project=project, profile=profile, task="toy", model="none",
    data={"source": "none", "train": 1, "validation": 1, "test": 1}, metrics={"score": score,
    "intervals": {"score": {"low": score, "high": score, "level": 0.95, "resamples": 1}}, "measured_on": {"score": "test"}},
    primary_metric="score", train={"runtime_s": 0.0, "samples_per_s": 0.0, "epochs": None, "processes": 1},
    parameters={"trainable": 0, "total": 0}, seed=0, config={"score": score})
record.write_record(rec, output_dir)'''


@pytest.fixture
def toy_root(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Toy"), params, nbformat.v4.new_code_cell(BODY)]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "toy.ipynb")
    folder = tmp_path / "params" / "toy"
    (folder / "smoke").mkdir(parents=True)
    (folder / "smoke.yaml").write_text("score: 0.25\n")
    (folder / "smoke" / "good.yaml").write_text("score: 0.75\n")
    (folder / "smoke" / "broken.yaml").write_text("fail: true\n")
    (folder / "smoke" / "typo.yaml").write_text("scroe: 0.9\n")
    return tmp_path


def test_discover_merges_profile_and_variant_files(toy_root):
    projects = runner.discover(toy_root, "smoke")
    assert [p.name for p in projects] == ["toy/broken", "toy/good", "toy/typo"]
    params = runner.project_parameters(projects[1], "smoke", "out")
    assert params["score"] == 0.75 and params["project"] == "toy/good"
    assert runner.discover(toy_root, "full") == []


@pytest.mark.slow
def test_failed_project_does_not_stop_the_others(toy_root, capsys):
    code = runner.main(["run-all", "--root", str(toy_root)])
    assert code == 1
    summary = json.loads((toy_root / "outputs" / "smoke" / "summary.json").read_text())
    rows = {row["project"]: row for row in summary["runs"]}
    assert rows["toy/good"]["status"] == "ok" and rows["toy/good"]["value"] == 0.75
    assert rows["toy/broken"]["status"] == "failed"
    assert "this toy project fails on purpose" in rows["toy/broken"]["error"]
    # The typo is caught before any kernel starts, with the valid names listed.
    assert rows["toy/typo"]["status"] == "failed"
    assert "'scroe' (did you mean 'score'?)" in rows["toy/typo"]["error"]
    assert "valid parameters: fail, output_dir, profile, project, score" in rows["toy/typo"]["error"]
    err = capsys.readouterr().err
    assert "FAILED toy/broken" in err and "outputs/smoke/toy/broken.incomplete/toy.ipynb" in err
    assert "FAILED toy/typo" in err and "stopped before the notebook ran" in err
    # The failed run still leaves its executed notebook, with the error in it, in a clearly
    # named folder of its own: never in the run folder, beside another run's record.
    assert (toy_root / "outputs" / "smoke" / "toy" / "broken.incomplete" / "toy.ipynb").is_file()
    assert not (toy_root / "outputs" / "smoke" / "toy" / "broken").exists()
    markdown = (toy_root / "outputs" / "smoke" / "summary.md").read_text()
    assert "| toy/good | ok |" in markdown and "| toy/broken | failed |" in markdown


def test_misspelt_parameter_error_lists_valid_names(toy_root):
    project = runner.select(runner.discover(toy_root, "smoke"), ["toy/typo"])[0]
    with pytest.raises(runner.ParameterError, match=r"'scroe' \(did you mean 'score'\?\)[\s\S]*"
                                                    r"valid parameters: fail, output_dir, profile, project, score"):
        runner.project_parameters(project, "smoke", "out")


@pytest.mark.slow
def test_command_line_overrides_are_checked_and_win(toy_root):
    assert runner.main(["run", "toy/good", "--root", str(toy_root), "-p", "score=0.5"]) == 0
    record = json.loads((toy_root / "outputs/smoke/toy/good/metrics.json").read_text())
    assert record["metrics"]["score"] == 0.5
    assert runner.main(["run", "toy/good", "--root", str(toy_root), "-p", "score=high"]) == 1


@pytest.mark.slow
def test_a_failed_run_after_a_good_one_leaves_the_good_one_whole(toy_root, capsys):
    """The failure is reported as this run's; the earlier run's record and notebook stay as they
    were, and the failed attempt's notebook lands in `<run>.incomplete`."""
    folder = toy_root / "outputs/smoke/toy/good"
    assert runner.main(["run", "toy/good", "--root", str(toy_root)]) == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (toy_root / "params/toy/smoke/good.yaml").write_text("score: 0.75\nfail: true\n")
    assert runner.main(["run", "toy/good", "--root", str(toy_root)]) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert (toy_root / "outputs/smoke/toy/good.incomplete/toy.ipynb").is_file()
    summary = json.loads((toy_root / "outputs/smoke/summary.json").read_text())
    assert [(r["project"], r["status"]) for r in summary["runs"]] == [("toy/good", "failed")]
    assert "FAILED toy/good" in capsys.readouterr().err


@pytest.mark.slow
def test_make_run_rebuilds_the_summary_from_the_records_on_disk(toy_root):
    """After `run` of one project the summary lists every project's run on disk, as after run-all."""
    assert runner.main(["run-all", "--root", str(toy_root)]) == 1
    assert runner.main(["run", "toy/good", "--root", str(toy_root), "-p", "score=0.5"]) == 0
    summary = json.loads((toy_root / "outputs/smoke/summary.json").read_text())
    rows = {r["project"]: r for r in summary["runs"]}
    assert rows["toy/good"]["value"] == 0.5 == json.loads(
        (toy_root / "outputs/smoke/toy/good/metrics.json").read_text())["metrics"]["score"]
    assert set(rows) == {"toy/good"}  # broken and typo left no finished run on disk
    assert "| toy/good | ok | none | score | 0.500 |" in (toy_root / "outputs/smoke/summary.md").read_text()


@pytest.mark.slow
def test_output_dir_on_the_command_line_is_honoured(toy_root):
    assert runner.main(["run", "toy/good", "--root", str(toy_root), "-p", "output_dir=elsewhere/good"]) == 0
    assert json.loads((toy_root / "elsewhere/good/metrics.json").read_text())["metrics"]["score"] == 0.75
    assert (toy_root / "elsewhere/good/toy.ipynb").is_file()
    assert not (toy_root / "outputs/smoke/toy/good").exists()


@pytest.mark.slow
def test_unknown_project_lists_the_known_ones(toy_root):
    with pytest.raises(SystemExit, match="unknown project 'toy/nope'.*toy/good"):
        runner.main(["run", "toy/nope", "--root", str(toy_root)])


# --- projects that read other projects' outputs (notebook metadata `nbutils.needs`) ---------

READER_BODY = '''import json, pathlib
from nbutils.run import record
# Reads the record toy/good left in this invocation: it must already be there.
score = json.loads((pathlib.Path(output_dir).parent / "toy" / "good" / "metrics.json").read_text())["metrics"]["score"]
rec = record.make_record(project=project, profile=profile, task="toy", model="none",
    data={"source": "none", "train": 1, "validation": 1, "test": 1}, metrics={"score": score,
    "intervals": {"score": {"low": score, "high": score, "level": 0.95, "resamples": 1}}, "measured_on": {"score": "test"}},
    primary_metric="score", train={"runtime_s": 0.0, "samples_per_s": 0.0, "epochs": None, "processes": 1},
    parameters={"trainable": 0, "total": 0}, seed=0, config={})
record.write_record(rec, output_dir)'''


def add_reader(root, name, needs):
    """A notebook `name` (sorting before "toy") whose metadata says it needs `needs`."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"},
                                            "nbutils": {"needs": needs}})
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Reader"), params, nbformat.v4.new_code_cell(READER_BODY)]
    nbformat.write(nb, root / "notebooks" / f"{name}.ipynb")
    (root / "params" / name).mkdir()
    (root / "params" / name / "smoke.yaml").write_text("score: 0.0\n")


def test_order_puts_a_project_after_the_ones_it_needs(toy_root):
    add_reader(toy_root, "aggregate", ["toy/good"])
    add_reader(toy_root, "report", ["toy"])
    projects = runner.discover(toy_root, "smoke")
    # Sorted by folder, both readers would run first.
    assert [p.name for p in projects][:2] == ["aggregate", "report"]
    assert projects[0].needs == ["toy/good"]
    ordered = [p.name for p in runner.order(projects)]
    assert ordered == ["toy/broken", "toy/good", "aggregate", "toy/typo", "report"]
    # `run` of a subset keeps the order the needs give, whatever order the names came in.
    chosen = runner.select(projects, ["aggregate", "toy/good"])
    assert [p.name for p in runner.order(chosen, projects)] == ["toy/good", "aggregate"]
    # A need that is not being run now is read from earlier outputs, not an ordering constraint.
    assert runner.dependencies(runner.select(projects, ["report"]), projects) == {"report": []}


@pytest.mark.slow
def test_a_cycle_of_needs_is_an_error_before_anything_runs(toy_root, capsys):
    add_reader(toy_root, "aggregate", ["report"])
    add_reader(toy_root, "report", ["aggregate"])
    with pytest.raises(runner.OrderError, match="cycle: aggregate -> report -> aggregate"):
        runner.order(runner.discover(toy_root, "smoke"))
    assert runner.main(["run-all", "--root", str(toy_root)]) == 2
    assert "cycle: aggregate -> report -> aggregate" in capsys.readouterr().err
    assert not (toy_root / "outputs").exists()


def test_a_need_that_names_no_project_is_an_error(toy_root):
    add_reader(toy_root, "aggregate", ["toys"])
    with pytest.raises(runner.OrderError, match="aggregate: its notebook aggregate.ipynb needs 'toys', "
                                                "which is no project of this profile"):
        runner.order(runner.discover(toy_root, "smoke"))


def test_needs_that_are_not_a_list_of_names_are_an_error(toy_root):
    add_reader(toy_root, "aggregate", "toy")
    with pytest.raises(runner.OrderError, match="aggregate.ipynb: metadata nbutils.needs must be a list "
                                                "of project or notebook names, got 'toy'"):
        runner.discover(toy_root, "smoke")


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "3"])
def test_run_all_runs_readers_after_their_needs_and_skips_them_when_one_failed(toy_root, capsys, jobs):
    add_reader(toy_root, "aggregate", ["toy/good"])  # toy/good succeeds
    add_reader(toy_root, "report", ["toy"])  # toy/broken and toy/typo fail
    assert runner.main(["run-all", "--root", str(toy_root), "--jobs", jobs]) == 1
    out = capsys.readouterr()
    started = [line.split()[1] for line in out.out.splitlines() if line.endswith(" ...")]
    finished = [line.split()[1].rstrip(":") for line in out.out.splitlines()
                if line.startswith("[smoke] ") and not line.endswith(" ...")]
    run_order = ["toy/broken", "toy/good", "aggregate", "toy/typo", "report"]
    if jobs == "1":
        assert started == run_order
    else:  # side by side: in another order, but each reader after what it needs, and once
        assert sorted(started) == sorted(run_order)
        assert finished.index("toy/good") < started.index("aggregate")
        assert max(finished.index(n) for n in ("toy/broken", "toy/typo")) < started.index("report")
    summary = json.loads((toy_root / "outputs" / "smoke" / "summary.json").read_text())
    # The summary lists the projects in run order, however many ran at once.
    assert [row["project"] for row in summary["runs"]] == run_order
    rows = {row["project"]: row for row in summary["runs"]}
    # aggregate read the record toy/good wrote earlier in the same run-all.
    assert rows["aggregate"]["status"] == "ok" and rows["aggregate"]["value"] == 0.75
    assert rows["report"]["status"] == "skipped"
    assert rows["report"]["error"] == "not run: it needs toy/broken, toy/typo, which did not finish"
    assert not (toy_root / "outputs" / "smoke" / "report").exists(), "a skipped project never starts"
    assert "SKIPPED report: not run: it needs toy/broken, toy/typo" in out.err


def test_summary_shows_which_splits_each_run_scored(tmp_path):
    """Two runs whose records hash different test rows show different digests in the summary."""
    def result(name, test_hash):
        rec = {"primary_metric": "roc_auc", "metrics": {"roc_auc": 0.9},
               "data": {"fingerprint": "sha256:d", "split_hashes": {"train": "sha256:a", "test": test_hash}}}
        return runner.Result(name, "ok", tmp_path / f"{name}.ipynb", 1.0, rec)

    rows = runner.summary_rows([result("a", "sha256:1"), result("b", "sha256:1"), result("c", "sha256:2")], tmp_path)
    assert "splits" in runner.SUMMARY_COLUMNS
    assert rows[0]["splits"] == rows[1]["splits"] != rows[2]["splits"]
    assert f"| {rows[2]['splits']} |" in runner.markdown_table(rows)


def test_summary_shows_the_headline_with_its_interval_and_split(tmp_path):
    rec = {"primary_metric": "roc_auc", "metrics": {
        "roc_auc": 0.9, "intervals": {"roc_auc": {"low": 0.8512, "high": 0.9431, "level": 0.95, "resamples": 1000}},
        "measured_on": {"roc_auc": "test"}}}
    rows = runner.summary_rows([runner.Result("a", "ok", tmp_path / "a.ipynb", 1.0, rec)], tmp_path)
    assert "| roc_auc | 0.900 | [0.851, 0.943] | test |" in runner.markdown_table(rows)


MEET_BODY = '''import pathlib, time
from nbutils.run import record
# Two projects that each wait for the other to have started: they finish only side by side.
here = pathlib.Path(output_dir)
here.mkdir(parents=True, exist_ok=True)  # a notebook makes its own run folder
(here / "started").touch()
other = here.parent / {"left": "right", "right": "left"}[here.name] / "started"
deadline = time.time() + 120
while not other.exists():
    assert time.time() < deadline, "the other project did not run at the same time"
    time.sleep(0.1)
rec = record.make_record(project=project, profile=profile, task="toy", model="none",
    data={"source": "none", "train": 1, "validation": 1, "test": 1}, metrics={"score": score,
    "intervals": {"score": {"low": score, "high": score, "level": 0.95, "resamples": 1}}, "measured_on": {"score": "test"}},
    primary_metric="score", train={"runtime_s": 0.0, "samples_per_s": 0.0, "epochs": None, "processes": 1},
    parameters={"trainable": 0, "total": 0}, seed=0, config={})
record.write_record(rec, output_dir)'''


@pytest.mark.slow
def test_jobs_run_projects_side_by_side_each_in_its_own_kernel(toy_root):
    nb = nbformat.read(toy_root / "notebooks" / "toy.ipynb", as_version=4)
    nb.cells[2] = nbformat.v4.new_code_cell(MEET_BODY)
    nbformat.write(nb, toy_root / "notebooks" / "meet.ipynb")
    (toy_root / "params" / "meet" / "smoke").mkdir(parents=True)
    for side in ("left", "right"):
        (toy_root / "params" / "meet" / "smoke" / f"{side}.yaml").write_text("score: 1.0\n")
    assert runner.main(["run", "meet", "--root", str(toy_root), "--jobs", "2"]) == 0
    for side in ("left", "right"):
        assert (toy_root / "outputs" / "smoke" / "meet" / side / "metrics.json").is_file()


def test_kernels_started_side_by_side_get_sockets_of_their_own():
    """jupyter_client's IPC default is `kernel-ipc` in the working folder for every kernel."""
    manager = runner.headless_kernel_manager()
    first, second = manager(), manager()
    assert first.ip != second.ip and first.ip.startswith("/") and second.ip.startswith("/")


@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_jobs_must_be_a_positive_count(toy_root, jobs, capsys):
    with pytest.raises(SystemExit):
        runner.parse_arguments(["run-all", "--root", str(toy_root), "--jobs", jobs])
    assert "--jobs" in capsys.readouterr().err


def test_side_by_side_jobs_share_the_cores():
    environ = {}
    assert runner.share_cores(2, environ) == environ == {"OMP_NUM_THREADS": str(runner.threads_per_job(2)),
                                                         "MKL_NUM_THREADS": str(runner.threads_per_job(2))}
    assert runner.threads_per_job(2, cores=2) == 1 and runner.threads_per_job(3, cores=8) == 2
    assert runner.threads_per_job(4, cores=2) == 1  # never none
    kept = {"OMP_NUM_THREADS": "4"}
    runner.share_cores(2, kept)
    assert kept["OMP_NUM_THREADS"] == "4"  # the user's choice stands
    assert runner.share_cores(1, {}) == {}  # one job: torch's own default


def test_smoke_runs_carry_the_fsdp_on_cpu_fixture_and_full_runs_nothing(tmp_path, monkeypatch):
    """Every process of a smoke run (kernel, `accelerate launch`, a notebook's own launch) finds
    the FSDP-on-CPU fixture first on PYTHONPATH; a full run, on GPUs, runs without it."""
    import os

    from conftest import ROOT

    site = ROOT / runner.FSDP_ON_CPU / "sitecustomize.py"
    assert site.is_file()
    env = runner.profile_environment("smoke", ROOT, {"PYTHONPATH": os.pathsep.join(["/a", str(site.parent)])})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(site.parent), "/a"]  # first, once
    assert runner.profile_environment("full", ROOT, {"PYTHONPATH": "/a"}) == {}
    monkeypatch.setenv("PYTHONPATH", "/a")
    with runner.run_environment("smoke", ROOT):
        assert os.environ["PYTHONPATH"] == os.pathsep.join([str(site.parent), "/a"])
    assert os.environ["PYTHONPATH"] == "/a"
