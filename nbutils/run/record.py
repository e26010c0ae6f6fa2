"""The run record: one `metrics.json` beside each executed notebook.

People compare runs from the summary table built out of these records, so the schema is
fixed here (`RECORD_FIELDS`), versioned, and checked by the tests.
"""

from __future__ import annotations

import functools
import json
import numbers
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from nbutils.run import runtime
from nbutils.run.secrets import redact_config

SCHEMA_VERSION = 1
RECORD_FILE = "metrics.json"

# Top-level fields every record has, in the order they are written.
RECORD_FIELDS = (
    "schema_version", "project", "profile", "task", "model", "data", "metrics", "primary_metric",
    "baselines", "train", "parameters", "seed", "config", "versions", "git", "created",
)
DATA_FIELDS = ("source", "train", "validation", "test")
TRAIN_FIELDS = ("runtime_s", "samples_per_s", "epochs", "processes")
# A run that trained a model by gradient steps (epochs set) also says what that cost in tokens:
# real tokens and token slots processed, their ratio, and real tokens per second.
TOKEN_FIELDS = ("real_tokens", "token_slots", "padding_efficiency", "tokens_per_s")
PARAMETER_FIELDS = ("trainable", "total")
# The data report of a training notebook (`data.report`, made by nbutils.run.row_report.data_report):
# rows read/kept/repaired/dropped, each reason with its first row ids, the share that stops a run.
DATA_REPORT_FIELDS = ("rows", "by_split", "dropped", "repaired", "noted", "max_bad_row_share")
ROW_COUNT_FIELDS = ("read", "kept", "repaired", "dropped")

# Beside its numbers, `metrics` holds two maps (`check_metrics`):
# - "intervals": {metric: {"low", "high", "level", "resamples"}}, a bootstrap interval over the
#   test rows (`nbutils.metrics.bootstrap_interval`); the primary metric always has one, so the
#   summary table and the notebook print it beside the value;
# - "measured_on": {metric: the split it was measured on, as a reader should read it ("test",
#   "held-out slice of train", ...)}: the evaluation results the model card publishes, and only
#   those (a threshold or a count of scored rows is no result).
INTERVALS = "intervals"
MEASURED_ON = "measured_on"

LIBRARIES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "trl",
             "scikit-learn", "numpy", "pandas", "nbutils")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: str | Path = ".") -> dict[str, object]:
    """Commit and whether the work tree had uncommitted changes (None outside a git checkout)."""
    def git(*args, timeout=10):
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=timeout)

    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    try:
        # `git status` may run the notebooks' clean filter (nbstripout, one Python process per
        # notebook it cannot tell clean from its stat data, e.g. every one in a fresh clone):
        # seconds on a busy machine. The commit is known either way.
        status = git("status", "--porcelain", "--untracked-files=no", timeout=120)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {"commit": head.stdout.strip(), "dirty": dirty}


def count_parameters(model) -> dict:
    """The record's `parameters`: trainable and total parameter counts and their ratio (the one
    parameter count of the collection). On a PEFT model PEFT counts them, which also undoes
    bitsandbytes' packing of two 4-bit weights into one stored element."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": int(trainable), "total": int(total),
            "trainable_fraction": round(trainable / total, 6) if total else 0.0}


def format_value(value, digits: int = 3) -> str:
    """A value as the summary table and the written conclusions show it: a float with `digits`
    decimals, None as "-", anything else as it prints."""
    if value is None:
        return "-"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{value:.{digits}f}"
    return str(value)


def train_summary(train_output) -> dict[str, float]:
    """Runtime and throughput from the `TrainOutput` that `Trainer.train()` returns, and the
    number of training processes (`accelerate launch` and torchrun set WORLD_SIZE)."""
    m = train_output.metrics
    return {"runtime_s": round(float(m["train_runtime"]), 3),
            "samples_per_s": round(float(m["train_samples_per_second"]), 3),
            "epochs": float(m.get("epoch", 0.0)),
            "processes": runtime.processes()}


# A record whose model ran on train/validation/test splits says which rows each held:
# data["split_hashes"] = {split: hash of its row ids} (`split_hashes`). Two records with other
# hashes scored other rows, and their numbers are not comparable; the summary table shows a
# short digest of them (runner.SUMMARY_COLUMNS "splits").
SPLIT_HASHES = "split_hashes"


def _row_key(row: dict, id_column: str | None) -> str:
    if id_column:
        return str(row[id_column])
    return json.dumps(row, sort_keys=True, default=str)  # no id column: the row's own content


def split_hash(rows, id_column: str | None = "row_id") -> str:
    """SHA-256 (16 hex digits) over the sorted ids of a split's rows (`id_column` of a Dataset,
    a DataFrame or a dict of columns), or, for data without that column (or `id_column=None`),
    over the sorted contents of its rows. The order of
    the rows does not count, which rows are in it does."""
    import hashlib

    columns = getattr(rows, "column_names", None)  # a Dataset; a DataFrame or a dict of columns
    columns = columns if columns is not None else list(rows.columns if hasattr(rows, "columns") else
                                                       rows.keys() if isinstance(rows, dict) else [])
    if id_column and id_column in columns:
        keys = sorted(str(v) for v in rows[id_column])
    else:
        keys = sorted(_row_key(row, None) for row in rows)
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def split_hashes(splits, id_column: str | None = "row_id") -> dict[str, str]:
    """{split name: `split_hash`} for a DatasetDict (or a dict of tables) of splits."""
    return {name: split_hash(rows, id_column) for name, rows in splits.items()}


def splits_digest(record: dict) -> str | None:
    """A short digest of the record's data fingerprint and split hashes, for the summary table:
    runs showing the same digest scored the same rows of the same data."""
    import hashlib

    data = record.get("data") or {}
    hashes = data.get(SPLIT_HASHES)
    if not hashes:
        return None
    text = json.dumps({"fingerprint": data.get("fingerprint"), "splits": hashes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# Training figures that describe the steps a run took: a run that took none keeps those of the
# run that trained its checkpoints.
TRAINING_FIGURES = ("runtime_s", "samples_per_s", "tokens_per_s")


def relative_path(value):
    """A path inside the repository (or the current folder) as a relative one, so records of
    the same run agree whether it ran headless or from a Lab copy; anything else as it is."""
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    for base in (_repository_root(), Path.cwd()):
        try:
            return str(Path(value).resolve().relative_to(base))
        except (ValueError, TypeError):
            continue
    return value


@functools.lru_cache(maxsize=1)
def _repository_root() -> Path | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip()).resolve() if out.returncode == 0 and out.stdout.strip() else None


def trained_train_block(train: dict, run) -> dict:
    """`train` as the record says it: where `run` trained nothing (it continued a finished
    checkpoint), marked `resumed_finished`, with the training figures of the run that trained
    it (None where that run's record is gone), never this call's zeros."""
    if run is None or not run.trained_nothing:
        return train
    previous = run.state.get("previous_train") or {}
    kept = {k: previous.get(k) for k in TRAINING_FIGURES if k in train}
    if "by_run" in train and "by_run" in previous:  # a study of several runs (finetuning_strategies)
        kept["by_run"] = previous["by_run"]
    return {**train, **kept, "resumed_finished": True}


def check_metrics(metrics: dict, primary_metric: str) -> None:
    """The record's metrics name their headline, its interval and the split of every result."""
    if primary_metric not in metrics:
        raise KeyError(f"primary_metric {primary_metric!r} is not among the metrics {sorted(metrics)}")
    intervals = metrics.get(INTERVALS) or {}
    if primary_metric not in intervals:
        raise KeyError(f"metrics.{INTERVALS} has no interval for the primary metric {primary_metric!r}: "
                       "every headline is reported with one (nbutils.metrics.bootstrap_interval)")
    for name, interval in intervals.items():
        missing = [f for f in ("low", "high", "level", "resamples") if f not in interval]
        if name not in metrics or missing:
            raise KeyError(f"metrics.{INTERVALS}.{name}: " + (f"lacks {missing}" if missing else
                           "is an interval of no metric the record has"))
    measured_on = metrics.get(MEASURED_ON) or {}
    if primary_metric not in measured_on:
        raise KeyError(f"metrics.{MEASURED_ON} does not say which split {primary_metric!r} was measured on")
    unknown = [name for name in measured_on if name not in metrics]
    if unknown:
        raise KeyError(f"metrics.{MEASURED_ON} names metrics the record lacks: {unknown}")


def make_record(*, project: str, profile: str, task: str, model: str, data: dict, metrics: dict,
                primary_metric: str, train: dict, parameters: dict, seed: int, config: dict,
                baselines: dict | None = None, run=None) -> dict:
    """Assemble a record and check it against the schema (a wrong key fails here, not later).

    `run` (`setup.Run`): a run that trained nothing says so (`trained_train_block`). Paths in
    the repository are written relative to it.
    """
    train = trained_train_block(train, run)
    data = {**data, "source": relative_path(data.get("source"))} if "source" in data else data
    model = relative_path(model)
    config = {name: relative_path(value) for name, value in config.items()}
    check_metrics(metrics, primary_metric)
    for name, value, fields in (("data", data, DATA_FIELDS), ("train", train, TRAIN_FIELDS),
                                ("parameters", parameters, PARAMETER_FIELDS)):
        missing = [f for f in fields if f not in value]
        if missing:
            raise KeyError(f"run record field {name!r} lacks {missing}")
    report = data.get("report")
    if report is not None:
        missing = [f for f in DATA_REPORT_FIELDS if f not in report]
        missing += [f"rows.{f}" for f in ROW_COUNT_FIELDS if f not in report.get("rows", {})]
        if missing:
            raise KeyError(f"run record field 'data.report' lacks {missing} (nbutils.run.row_report.data_report)")
    missing = [f for f in TOKEN_FIELDS if f not in train] if train.get("epochs") is not None else []
    if missing:
        raise KeyError(f"run record field 'train' lacks {missing}: a trained model's record counts its "
                       "tokens (nbutils.batching.train_token_summary)")
    record = {
        "schema_version": SCHEMA_VERSION, "project": project, "profile": profile, "task": task,
        "model": model, "data": data, "metrics": metrics, "primary_metric": primary_metric,
        "baselines": baselines or {}, "train": train, "parameters": parameters, "seed": seed,
        # Credentials in URL parameters (an hpo_storage database URL) are masked.
        "config": redact_config(config), "versions": library_versions(), "git": git_state(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    assert tuple(record) == RECORD_FIELDS
    return record


def write_json(path: str | Path, payload, indent: int = 2, default=str) -> Path:
    """Write `payload` as JSON atomically (a crash mid-write never leaves half a file), from the
    main process only (in a multi-process run the others return the path without writing)."""
    path = Path(path)
    if not runtime.is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=indent, default=default) + "\n")
    tmp.replace(path)
    return path


def write_record(record: dict, output_dir: str | Path) -> Path:
    """Write `metrics.json` atomically (a crash mid-write never leaves half a record)."""
    return write_json(Path(output_dir) / RECORD_FILE, record)


def trained(run, trainer, train_output, memory_estimate: dict | None = None, **more) -> dict:
    """The record's `train` block of a Trainer's run: time and throughput (`train_summary`),
    tokens and padding (`batching.train_token_summary`), the memory estimate made before
    loading, and what each training process held (`distributed.summary`: every process must
    call this, it gathers). `more`: the project's own training figures."""
    from nbutils import batching
    from nbutils.parallel import distributed

    block = {**train_summary(train_output), **batching.train_token_summary(trainer, train_output), **more}
    if memory_estimate is not None:
        block["memory_estimate"] = memory_estimate
    block["distributed"] = distributed.summary(trainer.model, run.strategy)
    return block


def write(run, **fields) -> dict:
    """Build the run's record (`make_record`, with the run's project, profile, seed and
    parameters) and write it into the run folder; returns it. Every process calls it; the
    main one writes."""
    config = run.config
    record = make_record(project=config["project"], profile=config["profile"], seed=config.get("seed"),
                         config=config, run=run, **fields)
    if run.is_main:
        print("run record:", write_record(record, run.dir))
    return record


def read_record(output_dir: str | Path) -> dict:
    return json.loads((Path(output_dir) / RECORD_FILE).read_text())
