"""Plots, checked on the figure's artists (no screenshots): legends name a model as the README's
table does, and stay off the axis labels."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from nbutils import plots

LABELS = np.array([0, 1] * 30)
PROBS = np.random.default_rng(0).random(60)


def _legend(fig):
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return ax, ax.get_legend(), renderer


@pytest.mark.parametrize("model, short", [
    ("/home/me/llm-notebooks/.cache/tiny-models/distilbert", "distilbert"),  # smoke, as `make lab` passes it
    ("distilbert/distilbert-base-uncased", "distilbert-base-uncased"),  # full profile: a hub id
])
def test_the_detection_roc_legend_names_the_model_short_and_leaves_the_axis_label_free(tmp_path, model, short):
    # What the detection notebook passes: its model_name, and the TF-IDF baseline.
    fig = plots.roc_curves({model: (LABELS, PROBS), "TF-IDF + logistic regression": (LABELS, 1 - PROBS)},
                           tmp_path / "roc_curve.png")
    ax, legend, renderer = _legend(fig)
    texts = [t.get_text() for t in legend.get_texts()]
    assert [t.split(" (AUC")[0] for t in texts] == [short, "TF-IDF + logistic regression"]
    box = legend.get_window_extent(renderer)
    assert not box.overlaps(ax.yaxis.label.get_window_extent(renderer)), "the legend covers the y-axis label"
    assert not box.overlaps(ax.xaxis.label.get_window_extent(renderer)), "the legend covers the x-axis label"
    assert ax.get_window_extent(renderer).x0 <= box.x0, "the legend reaches out of the axes"


def test_roc_styles_still_apply_to_the_names_given(tmp_path):
    """The ensemble keys its styles by the names it passes; the legend shortens them."""
    fig = plots.roc_curves({"org/bert": (LABELS, PROBS), "mean": (LABELS, PROBS)}, tmp_path / "roc.png",
                           styles={"org/bert": {"linestyle": "--"}})
    styles = {line.get_label().split(" (AUC")[0]: line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert styles["bert"] == "--" and styles["mean"] == "-"


def test_the_outcome_bars_legend_names_the_model_short(tmp_path):
    counts = {"/abs/.cache/tiny-models/t5": {"correct": 3, "wrong_result": 2},
              "nearest training answer": {"correct": 1, "wrong_result": 4}}
    _, legend, _ = _legend(plots.outcome_bars(counts, tmp_path / "outcomes.png"))
    assert [t.get_text() for t in legend.get_texts()] == ["t5", "nearest training answer"]


def test_short_name():
    assert plots.short_name("google-bert/bert-base-uncased") == "bert-base-uncased"
    assert plots.short_name("/x/.cache/tiny-models/bert/") == "bert"
    assert plots.short_name("TF-IDF + logistic regression") == "TF-IDF + logistic regression"


def test_in_a_run_of_several_processes_only_the_main_one_writes_the_plot(tmp_path, monkeypatch):
    """Every process runs the plot cell; the notebooks guard nothing, so the plot functions
    write the file once (two processes writing one PNG at once could leave it corrupt)."""
    log = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert plots.loss_curves(log, tmp_path / "second.png").axes  # drawn
    assert not (tmp_path / "second.png").exists()  # not written
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    plots.loss_curves(log, tmp_path / "main.png")
    assert (tmp_path / "main.png").stat().st_size > 0
