"""Kaggle and Colab: environment detection, and the bundles `make kaggle` builds."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from nbutils.run import environment, record
from tools import kaggle, runner

# One group for the module: its simulated-Kaggle test compares with the detection smoke run, and
# every user of the `bundles` module fixture must run on that test's worker (built once).
pytestmark = pytest.mark.xdist_group("smoke-detect_ai_text")

REQUIRED = {"id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
            "enable_internet", "dataset_sources", "competition_sources", "kernel_sources",
            "model_sources"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("kaggle")
    settings = kaggle.load_settings(ROOT, {"KAGGLE_USERNAME": "alice"})
    return out, kaggle.build_bundles(ROOT, out, "full", settings)


def test_every_full_project_gets_a_complete_kernel_bundle(bundles):
    out, folders = bundles
    projects = runner.discover(ROOT, "full")
    assert len(folders) == len(projects) + 1
    for project in projects:
        folder = out / project.name.replace("/", "-")
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        assert REQUIRED <= set(meta), REQUIRED - set(meta)
        assert meta["id"] == "alice/" + kaggle.slugify(meta["title"]), "Kaggle wants id == slug(title)"
        assert (folder / meta["code_file"]).is_file()
        assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
        assert "alice/nbutils-wheels" in meta["dataset_sources"]
        # Hub checkpoints are downloaded at run time, so these kernels need the internet (the
        # ensemble reads other runs' probabilities and downloads nothing).
        assert meta["enable_internet"] is (project.name != "detect_ensemble")


def test_bundled_notebook_has_the_full_parameters_in_its_parameters_cell(bundles):
    """Written into the cell a Kaggle user edits: no injected cell below it overrides an edit."""
    out, _ = bundles
    nb = nbformat.read(out / "detect_ai_text-deberta" / "detect_ai_text.ipynb", as_version=4)
    assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "model_name: str = 'microsoft/deberta-v3-base'  #" in cell.source
    assert "profile: str = 'full'  #" in cell.source and "written in by `make kaggle`" in cell.source
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "prepared, not run"


def test_detection_bundle_attaches_its_data_and_competition(bundles):
    meta = json.loads((bundles[0] / "detect_ai_text-bert" / "kernel-metadata.json").read_text())
    assert "thedrcat/daigt-v2-train-dataset" in meta["dataset_sources"]
    assert meta["competition_sources"] == ["llm-detect-ai-generated-text"]


def test_wheels_dataset_holds_the_nbutils_wheel(bundles):
    folder = bundles[0] / "nbutils-wheels"
    assert len(list(folder.glob("nbutils-*-py3-none-any.whl"))) == 1
    meta = json.loads((folder / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/nbutils-wheels" and meta["title"] and meta["licenses"]
    # The notebooks ride along: with num_processes > 1, nbutils.parallel.launch runs them in each process.
    assert sorted(p.name for p in (folder / "notebooks").glob("*.ipynb")) == \
        sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def test_missing_user_name_is_a_clear_error():
    with pytest.raises(kaggle.KaggleConfigError, match="KAGGLE_USERNAME"):
        kaggle.load_settings(ROOT, {})


def test_unknown_kaggle_input_folder_is_a_clear_error():
    project = runner.discover(ROOT, "full")[0]
    settings = kaggle.KaggleSettings(username="alice", repository="https://example.invalid/repo")
    with pytest.raises(kaggle.KaggleConfigError, match="no dataset provides it"):
        kaggle.kernel_metadata(project, {"data_source": "/kaggle/input/secret-data/x.csv"}, settings)


def test_smoke_project_without_full_counterpart_is_a_clear_error(tmp_path):
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(ROOT / "params", tmp_path / "params")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    extra = tmp_path / "params" / "detect_ai_text" / "smoke" / "tinybert.yaml"
    extra.write_text("model_name: .cache/tiny-models/bert\n")
    settings = kaggle.load_settings(tmp_path, {"KAGGLE_USERNAME": "alice"})
    with pytest.raises(kaggle.KaggleConfigError, match="no full parameters for: detect_ai_text/tinybert"):
        kaggle.build_bundles(tmp_path, tmp_path / "out", "full", settings)


@pytest.mark.parametrize("environ, name", [
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle"),
    ({"COLAB_RELEASE_TAG": "release-colab_20261101"}, "colab"),
    ({}, "local"),
])
def test_environment_detection(environ, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = environment.detect({**environ, environment.KAGGLE_ROOT_VARIABLE: str(tmp_path / "kaggle")})
    assert env.name == name
    folder = environment.run_folder("outputs/run", env)
    expected = {"kaggle": tmp_path / "kaggle" / "working", "colab": Path("/content"),
                "local": tmp_path}[name] / "outputs" / "run"
    assert folder == expected
    assert environment.run_folder("/abs/run", env) == Path("/abs/run")


def test_kaggle_is_recognised_by_its_folders_alone(tmp_path):
    (tmp_path / "kaggle" / "working").mkdir(parents=True)
    env = environment.detect({environment.KAGGLE_ROOT_VARIABLE: str(tmp_path / "kaggle")})
    assert env.name == "kaggle" and env.input_dir == tmp_path / "kaggle" / "input"


@pytest.mark.slow
def test_prepared_notebook_runs_in_a_simulated_kaggle(cache, tmp_path, bundles, smoke_run):
    """Kaggle with internet off: inputs under <root>/input, writes under <root>/working, and a
    kernel whose Python lacks nbutils until the notebook's first cell installs it from the
    bundle's wheel dataset with --no-index. It trains in two processes launched from inside the
    notebook (accelerate.notebook_launcher, as on Kaggle's two T4s; gloo here), which run the
    notebook copy that the wheels dataset carries."""
    import os
    import subprocess
    import sys
    import sysconfig

    import papermill

    kaggle_root = tmp_path / "kaggle"
    (kaggle_root / "working").mkdir(parents=True)
    shutil.copytree(bundles[0] / "nbutils-wheels", kaggle_root / "input" / "nbutils-wheels")
    shutil.copy(cache / "sample-data" / "daigt_v2_train.csv", kaggle_root / "input" / "essays.csv")
    shutil.copytree(cache / "tiny-models" / "bert", kaggle_root / "input" / "tiny-bert")

    # A fresh venv that sees the pinned libraries (Kaggle's image has its own) but not nbutils.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    image = tmp_path / "image-site-packages"  # the pinned set minus nbutils's own (editable) install
    image.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "nbutils" not in entry.name:
            (image / entry.name).symlink_to(entry)
    (site / "image.pth").write_text(f"{image}\n")
    python = venv / "bin" / "python"
    # Nor through PYTHONPATH, if the developer's shell sets it to the checkout.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([str(python), "-c", "import nbutils"], cwd=tmp_path, capture_output=True, env=clean)
    assert probe.returncode != 0, "nbutils must be missing before the install cell runs"
    kernels = tmp_path / "jupyter"
    spec = kernels / "kernels" / "kaggle-sim"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kaggle-sim", "language": "python"}))

    settings = kaggle.load_settings(ROOT, {"KAGGLE_USERNAME": "alice"})
    smoke = {"data_source": str(kaggle_root / "input" / "essays.csv"),
             "model_name": str(kaggle_root / "input" / "tiny-bert"), "num_processes": 2}
    folder = kaggle.prepare_project(runner.select(runner.discover(ROOT, "smoke"), ["detect_ai_text/bert"])[0],
                                    "smoke", tmp_path / "bundle", settings, smoke)
    env = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", environment.KAGGLE_ROOT_VARIABLE: str(kaggle_root),
           # The image's own Jupyter data (nbconvert's templates, which nbutils.parallel.launch uses) stays
           # visible, as on Kaggle; the kernel spec comes first.
           "JUPYTER_PATH": os.pathsep.join([str(kernels), str(Path(sys.prefix) / "share" / "jupyter")]),
           "PIP_NO_INDEX": "1"}
    old = {k: os.environ.get(k) for k in [*env, "PYTHONPATH"]}
    os.environ.update(env)
    os.environ.pop("PYTHONPATH", None)
    try:
        papermill.execute_notebook(str(folder / "detect_ai_text.ipynb"), str(tmp_path / "executed.ipynb"),
                                   kernel_name="kaggle-sim", cwd=str(kaggle_root / "working"),
                                   progress_bar=False)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    run_dir = kaggle_root / "working" / "outputs" / "smoke" / "detect_ai_text" / "bert"
    assert (run_dir / "metrics.json").is_file(), "outputs belong under /kaggle/working"
    assert list(site.glob("nbutils-*.dist-info")), "the first cell installed the wheel into the venv"
    executed = (tmp_path / "executed.ipynb").read_text()
    assert "trained in 2 processes" in executed
    assert "input/nbutils-wheels/notebooks/detect_ai_text.ipynb" in executed
    rec = record.read_record(run_dir)
    assert rec["train"]["processes"] == 2
    assert "environment: kaggle" in (run_dir / "launch.log").read_text()
    # `num_processes: 2` inside the notebook (how Kaggle's two T4s are used): the kernel started
    # two processes with accelerate.notebook_launcher, they trained one DDP run, and the kernel
    # showed the result and skipped the cells those processes had already run.
    cells = nbformat.read(tmp_path / "executed.ipynb", as_version=4).cells
    launch_at = next(i for i, c in enumerate(cells) if "run = nb.run.start(globals()" in c.source)
    assert "trained in 2 processes" in "".join(o.get("text", "") for o in cells[launch_at].outputs)
    later = [c for c in cells[launch_at + 1:] if c.cell_type == "code"]
    assert later and not any(c.outputs for c in later), "the kernel ran cells the processes had run"
    # In line with the session's one-process run of the same recipe on the same rows.
    single = record.read_record(smoke_run("detect_ai_text")[1] / "detect_ai_text" / "bert")
    assert single["train"]["processes"] == 1
    assert rec["data"]["fingerprint"] == single["data"]["fingerprint"]
    assert rec["data"]["split_hashes"] == single["data"]["split_hashes"]
    assert abs(rec["metrics"]["roc_auc"] - single["metrics"]["roc_auc"]) < 0.1


def test_the_ensemble_kernel_attaches_only_the_detection_kernels_it_reads(bundles):
    out, _ = bundles
    meta = json.loads((out / "detect_ensemble" / "kernel-metadata.json").read_text())
    ensemble = runner.select(runner.discover(ROOT, "full"), ["detect_ensemble"])[0]
    runs = runner.project_parameters(ensemble, "full", "outputs/full/detect_ensemble")["runs"]
    detection = [p.name for p in runner.discover(ROOT, "full") if p.name.startswith("detect_ai_text/")]
    read = [f"detect_ai_text/{run}" for run in runs]
    assert set(read) < set(detection), "the ensemble reads some of the detection runs, not all"
    ids = {json.loads((out / name.replace("/", "-") / "kernel-metadata.json").read_text())["id"]: name
           for name in detection}  # the ids of the detection bundles themselves
    assert sorted(ids[i] for i in meta["kernel_sources"]) == sorted(read)
    assert all(json.loads((out / name.replace("/", "-") / "kernel-metadata.json").read_text())["kernel_sources"]
               == [] for name in detection)


def test_only_the_kernels_that_train_ask_for_a_gpu(bundles):
    """The ensemble fits a logistic regression on a CPU; every other notebook trains a transformer."""
    out, _ = bundles
    for project in runner.discover(ROOT, "full"):
        meta = json.loads((out / project.name.replace("/", "-") / "kernel-metadata.json").read_text())
        assert meta["enable_gpu"] is (project.name != "detect_ensemble"), project.name


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_every_kernel_title_fits_kaggle_and_names_one_project(profile):
    """Kaggle's server refuses a title over 50 characters with a bare 500; two projects with one
    id would overwrite each other's kernel."""
    settings = kaggle.KaggleSettings(username="alice", repository="https://example.invalid/repo")
    names = [p.name for p in runner.discover(ROOT, profile)]
    titles = [kaggle.kernel_title(name) for name in names]
    assert max(map(len, titles)) <= kaggle.MAX_TITLE == 50, max(titles, key=len)
    assert len({kaggle.kernel_id(name, settings) for name in names}) == len(set(titles)) == len(names)


def test_two_projects_with_one_kernel_id_are_a_clear_error(tmp_path):
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(ROOT / "params", tmp_path / "params")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    # `bert-gradual` and `bert_gradual` make one slug, so one kernel id.
    shutil.copy(tmp_path / "params" / "detect_ai_text" / "full" / "bert_gradual.yaml",
                tmp_path / "params" / "detect_ai_text" / "full" / "bert-gradual.yaml")
    settings = kaggle.load_settings(tmp_path, {"KAGGLE_USERNAME": "alice"})
    with pytest.raises(kaggle.KaggleConfigError, match="same Kaggle kernel id: detect_ai_text/bert-gradual, "
                                                       "detect_ai_text/bert_gradual"):
        kaggle.build_bundles(tmp_path, tmp_path / "out", "full", settings)


def test_a_title_over_50_characters_is_a_clear_error():
    with pytest.raises(kaggle.KaggleConfigError, match="at most 50"):
        kaggle.kernel_title("instruction_tune/qwen2_5_0_5b_instruct_with_a_longer_name")


def test_ensemble_gathers_the_attached_detection_runs_on_kaggle(tmp_path):
    """Each detection kernel's /kaggle/working is mounted as /kaggle/input/<kernel>/."""
    from nbutils.run import setup
    from nbutils.tasks import ensemble

    env = environment.detect({environment.KAGGLE_ROOT_VARIABLE: str(tmp_path), "KAGGLE_KERNEL_RUN_TYPE": "Batch"})
    for run in ("bert", "roberta"):
        folder = tmp_path / "input" / f"llm-detect-ai-text-{run}" / "outputs" / "full" / "detect_ai_text" / run
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text("{}")
    run_dir = environment.run_folder("outputs/full/detect_ensemble", env)
    gathered = ensemble.kaggle_runs_dir(env, run_dir, "detect_ensemble")
    assert sorted(p.name for p in gathered.iterdir()) == ["bert", "roberta"]
    # What the notebook asks (runs_dir empty) finds them there.
    run = setup.Run(project="detect_ensemble", dir=setup.attempt_folder(run_dir), env=env, final=run_dir)
    assert ensemble.runs_folder(run) == gathered
    assert (gathered / "bert" / "metrics.json").is_file()
    assert gathered.is_relative_to(tmp_path / "working")
