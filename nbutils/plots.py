"""Plots every run leaves in its folder and shows inline: loss curves, confusion matrix, ROC.

Each function saves a PNG to `path` and returns the figure, so a notebook cell both writes
the file for the run record and displays it.
"""

from __future__ import annotations

from pathlib import Path


def _figure(title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.set_title(title)
    return fig, ax


def _save(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def loss_curves(log_history: list[dict], path, title: str = "Loss"):
    """Training loss per logging step and evaluation loss per evaluation, from Trainer's log."""
    fig, ax = _figure(title)
    for key, label, style in (("loss", "train", "-"), ("eval_loss", "validation", "o-")):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    _save(fig, path)
    return fig


def confusion_matrix(labels, predictions, path, class_names=("human", "generated"),
                     title: str = "Confusion matrix (test)"):
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = _figure(title)
    ConfusionMatrixDisplay.from_predictions(labels, predictions, display_labels=list(class_names),
                                            ax=ax, colorbar=False)
    _save(fig, path)
    return fig


def roc_curves(curves: dict, path, title: str = "ROC (test)"):
    """`curves` maps a name to (labels, probabilities); all are drawn on one axis."""
    from sklearn.metrics import RocCurveDisplay

    fig, ax = _figure(title)
    for name, (labels, probabilities) in curves.items():
        RocCurveDisplay.from_predictions(labels, probabilities, name=name, ax=ax)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    _save(fig, path)
    return fig
