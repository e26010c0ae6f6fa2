"""nbutils.launch: when a notebook launches its own training processes, and what it runs."""

import pytest

from nbutils import launch


def test_launches_only_for_several_processes_and_never_from_a_launched_one(monkeypatch):
    monkeypatch.delenv(launch.LAUNCHED, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launch.wanted(1)
    assert launch.wanted(2)
    monkeypatch.setenv(launch.LAUNCHED, "1")  # inside a process it started itself
    assert not launch.wanted(2)
    monkeypatch.delenv(launch.LAUNCHED)
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside `accelerate launch` / torchrun
    assert not launch.wanted(2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_num_processes_must_be_a_positive_whole_number(bad):
    with pytest.raises(ValueError, match="num_processes"):
        launch.wanted(bad)


def test_the_notebook_comes_from_the_checkout_or_the_kaggle_wheels_dataset(tmp_path, monkeypatch):
    assert launch.notebook_file("detect_ai_text").parent.name == "notebooks"
    monkeypatch.setenv("NBUTILS_KAGGLE_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no_such_notebook\.ipynb.*make kaggle"):
        launch.notebook_file("no_such_notebook")
    bundled = tmp_path / "input" / "nbutils-wheels" / "notebooks" / "no_such_notebook.ipynb"
    bundled.parent.mkdir(parents=True)
    bundled.write_text("{}")
    assert launch.notebook_file("no_such_notebook") == bundled


def test_the_script_carries_the_injected_parameters(cache, tmp_path):
    from conftest import ROOT

    script = launch.notebook_script(ROOT / "notebooks" / "detect_ai_text.ipynb",
                                    {"project": "p", "epochs": 7, "num_processes": 2}, tmp_path)
    source = script.read_text()
    assert "epochs = 7" in source and "num_processes = 2" in source
    compile(source, str(script), "exec")  # a valid Python script
