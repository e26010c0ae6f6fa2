"""Plots every run leaves in its folder and shows inline: loss curves, confusion matrix, ROC.

Each function saves a PNG to `path` and returns the figure, so a notebook cell both writes
the file for the run record and displays it. In a run of several processes every process draws
and the main one writes the file, so the cell needs no guard and no two processes write it. A legend names a model as the README's table
does, by the last part of its hub id or folder (`bert-base-uncased`, not
`google-bert/bert-base-uncased` or a long absolute path that covers the axis label).
"""

from __future__ import annotations

from pathlib import Path


def _figure(title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.set_title(title)
    return fig, ax


def short_name(model: str) -> str:
    """`google-bert/bert-base-uncased` -> `bert-base-uncased`, `/x/.cache/tiny-models/bert` ->
    `bert`; a name that is neither a hub id nor a path stays as it is."""
    return Path(model).name or model


def _save(fig, path) -> None:
    from nbutils.run import runtime

    if not runtime.is_main_process():
        return
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


def roc_curves(curves: dict, path, title: str = "ROC (test)", styles: dict | None = None):
    """`curves` maps a name to (labels, probabilities); all are drawn on one axis. `styles`
    maps a name to matplotlib line settings (e.g. {"linestyle": "--"}) for that curve."""
    from sklearn.metrics import RocCurveDisplay

    fig, ax = _figure(title)
    for name, (labels, probabilities) in curves.items():
        RocCurveDisplay.from_predictions(labels, probabilities, name=short_name(name), ax=ax,
                                         curve_kwargs=(styles or {}).get(name))
    ax.plot([0, 1], [0, 1], ":", color="grey")
    # The ROC axes are square, narrower than the figure: at the default size a legend entry of
    # about 40 characters ("TF-IDF + logistic regression (AUC = 0.97)") reaches past the axes'
    # left edge onto the y-axis label.
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)
    return fig


def length_histogram(lengths, max_length: int, path, title: str = "Training example lengths"):
    """Token counts of the examples, with `max_length` marked: everything right of it is cut."""
    import numpy as np

    lengths = np.asarray(lengths)
    fig, ax = _figure(title)
    ax.hist(lengths, bins=40, color="tab:blue", alpha=0.8)
    cut = float((lengths > max_length).mean())
    ax.axvline(max_length, color="tab:red", linestyle="--",
               label=f"max_length {max_length} ({cut:.0%} cut)")
    ax.set_xlabel("tokens (prompt + answer)")
    ax.set_ylabel("examples")
    ax.legend()
    _save(fig, path)
    return fig


def outcome_bars(counts: dict[str, dict[str, int]], path, title: str = "Execution outcomes (test)"):
    """Grouped bars: for each system (model, baseline), how many examples end in each outcome
    (correct, wrong result, syntax error, ...). `counts` maps system -> outcome -> examples."""
    import numpy as np

    systems = list(counts)
    outcomes = list(dict.fromkeys(k for c in counts.values() for k in c))
    fig, ax = _figure(title)
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(outcomes))
    for i, system in enumerate(systems):
        ax.bar(x + i * width, [counts[system].get(o, 0) for o in outcomes], width, label=short_name(system))
    ax.set_xticks(x + width * (len(systems) - 1) / 2)
    ax.set_xticklabels([o.replace("_", " ") for o in outcomes], rotation=30, ha="right")
    ax.set_ylabel("examples")
    ax.legend()
    _save(fig, path)
    return fig


# --- The fine-tuning strategies study


def train_validation_losses(histories: dict[str, list[dict]], path,
                            title: str = "Train vs validation loss (evaluation mode)"):
    """One panel per strategy: loss on a sample of the training rows and on the validation split
    at each evaluation (`nbutils.tasks.strategies.study.loss_history` rows), on a shared loss axis; the
    space between the lines is the overfitting gap."""
    import matplotlib.pyplot as plt

    names = list(histories)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(2.9 * max(1, len(names)), 3.2),
                             sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = histories[name]
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["train_loss"] for r in rows], "o-", markersize=3, label="train")
        ax.plot(steps, [r["validation_loss"] for r in rows], "o-", markersize=3, label="validation")
        ax.fill_between(steps, [r["train_loss"] for r in rows], [r["validation_loss"] for r in rows],
                        color="tab:orange", alpha=0.12)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return fig


def metric_vs_forgetting(points: dict[str, tuple[float, float]], path, metric_name: str = "test ROC AUC",
                         title: str = "Task metric vs forgetting"):
    """A labelled point per strategy: forgetting (the rise in masked-LM loss on general text) on
    x, the task metric on y. Up and to the left is better on both counts."""
    fig, ax = _figure(title)
    for name, (forgetting, metric) in points.items():
        ax.scatter([forgetting], [metric], s=40)
        ax.annotate(name, (forgetting, metric), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(0, color="grey", linestyle=":")
    ax.set_xlabel("forgetting: masked-LM loss after - before (nats/token)")
    ax.set_ylabel(metric_name)
    _save(fig, path)
    return fig


def data_size_curves(curves: dict[str, dict], path, metric_name: str = "test ROC AUC",
                     title: str = "Task metric vs training-set size"):
    """One line per strategy: the task metric at each training-set size (`{rows: metric}`)."""
    fig, ax = _figure(title)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ticks = set()
    for name, points in curves.items():
        sizes = sorted(points, key=float)
        ticks.update(float(s) for s in sizes)
        ax.plot([float(s) for s in sizes], [points[s] for s in sizes], "o-", label=name)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks))  # label the sizes trained, in plain numbers
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel(metric_name)
    ax.legend()
    _save(fig, path)
    return fig
