"""Hyperparameter search: `Trainer.hyperparameter_search` with Optuna over a declared space.

The space is plain data, so it fits in a YAML parameter file. Each entry names a training
setting (a notebook's name such as `batch_size`, or a `TrainingArguments` field) and gives either
a list of choices or a range:

    {"learning_rate": {"low": 1.0e-5, "high": 1.0e-4, "log": true},   # float range, log scale
     "batch_size": [8, 16, 32],                                        # choices
     "epochs": {"low": 1, "high": 3},                                  # whole numbers
     "warmup_ratio": {"low": 0.0, "high": 0.2},
     "weight_decay": {"low": 0.0, "high": 0.1}}

The Trainer needs `model_init` (a fresh model per trial) and cannot take `optimizers=`; a
custom optimizer comes from overriding `create_optimizer`, as `nbutils.optim.LayerGroupTrainer`
does. Optuna's TPE sampler is seeded, so the same seed tries the same settings.

Trials save no checkpoints: each trial is scored by its last evaluation and thrown away, and
checkpoints of every trial (model and optimizer state, about 12 bytes per parameter each, two
per trial) would fill a Kaggle disk: 20 trials of roberta-base are about 60 GB.
`expected_cost` says what a search will take before it starts.
"""

from __future__ import annotations

# A notebook's parameter name -> the TrainingArguments field it sets.
ARGUMENT_NAMES = {"batch_size": "per_device_train_batch_size", "epochs": "num_train_epochs",
                  "warmup_ratio": "warmup_steps"}  # warmup_steps below 1 is a fraction of all steps
DIRECTIONS = ("maximize", "minimize")


def _argument(name: str) -> str:
    from transformers import TrainingArguments

    field = ARGUMENT_NAMES.get(name, name)
    if field not in TrainingArguments.__dataclass_fields__:
        raise ValueError(f"hpo_space: {name!r} is not a training setting; use one of "
                         f"{', '.join(ARGUMENT_NAMES)} or a TrainingArguments field such as "
                         "learning_rate, weight_decay, lr_scheduler_type")
    return field


def as_training_arguments(settings: dict) -> dict:
    """Settings by space name -> by TrainingArguments field (`batch_size` -> `per_device_train_batch_size`)."""
    return {_argument(name): value for name, value in settings.items()}


def check_space(space: dict) -> None:
    """Raise ValueError, naming the entry, for anything Optuna could not sample."""
    if not isinstance(space, dict) or not space:
        raise ValueError(f"hpo_space must be a non-empty mapping of setting -> choices or range, got {space!r}")
    for name, spec in space.items():
        _argument(name)
        if isinstance(spec, list):
            if not spec:
                raise ValueError(f"hpo_space[{name!r}]: the list of choices is empty")
        elif isinstance(spec, dict):
            unknown = set(spec) - {"low", "high", "log", "step"}
            if unknown or not {"low", "high"} <= set(spec):
                raise ValueError(f"hpo_space[{name!r}]: a range is {{low, high}} with optional log and "
                                 f"step, got {spec!r}")
            if not spec["low"] < spec["high"]:
                raise ValueError(f"hpo_space[{name!r}]: low must be below high, got {spec!r}")
            if spec.get("log") and spec["low"] <= 0:
                raise ValueError(f"hpo_space[{name!r}]: a log-scale range needs low > 0, got {spec!r}")
        else:
            raise ValueError(f"hpo_space[{name!r}]: expected a list of choices or a {{low, high}} range, "
                             f"got {spec!r}")


def optuna_space(space: dict):
    """An `hp_space` function for `Trainer.hyperparameter_search`: trial -> {TrainingArguments field: value}."""
    check_space(space)

    def hp_space(trial) -> dict:
        values = {}
        for name, spec in space.items():
            if isinstance(spec, list):
                value = trial.suggest_categorical(name, spec)
            elif all(isinstance(spec.get(k, 1), int) and not isinstance(spec.get(k), bool)
                     for k in ("low", "high", "step")):  # whole numbers: epochs, batch sizes
                value = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                          log=bool(spec.get("log", False)))
            else:
                value = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                            log=bool(spec.get("log", False)), step=spec.get("step"))
            values[_argument(name)] = value
        return values

    return hp_space


def run_search(trainer, space: dict, n_trials: int, metric: str, direction: str = "maximize",
               seed: int = 0):
    """Run `n_trials` trials; return (best settings by space name, objective, table of all trials).

    `metric` is a key of `trainer.evaluate()` without the `eval_` prefix (e.g. "roc_auc"); each
    trial is scored by its last evaluation. The table (a DataFrame) has one row per trial: its
    number, settings, objective and state.
    """
    import optuna
    import pandas as pd

    if direction not in DIRECTIONS:
        raise ValueError(f"hpo_direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"hpo_trials must be a whole number >= 1, got {n_trials!r}")
    if trainer.model_init is None:
        raise ValueError("hyperparameter search needs a Trainer built with model_init= (a fresh model per trial)")
    hp_space = optuna_space(space)
    saved = _without_checkpoints(trainer)

    def objective(metrics: dict) -> float:
        key = metric if metric.startswith("eval_") else f"eval_{metric}"
        if key not in metrics:
            raise KeyError(f"hpo_metric={metric!r}: the evaluation reports no {key!r}; it reports "
                           + ", ".join(sorted(metrics)))
        return float(metrics[key])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()  # kept here, so every trial can be read back
    try:
        best = trainer.hyperparameter_search(
            hp_space=hp_space, compute_objective=objective, n_trials=n_trials, direction=direction,
            backend="optuna", sampler=optuna.samplers.TPESampler(seed=seed), storage=storage,
            study_name="search")
    finally:
        for name, value in saved.items():
            setattr(trainer.args, name, value)
    study = optuna.load_study(study_name="search", storage=storage)
    table = pd.DataFrame([{"trial": t.number, **t.params, "objective": t.value, "state": t.state.name}
                          for t in study.trials])
    return dict(best.hyperparameters), float(best.objective), table


def _without_checkpoints(trainer) -> dict:
    """Make the trainer's trials save nothing (no checkpoint, so no best one to load back);
    returns the settings changed, to restore."""
    from transformers.trainer_utils import SaveStrategy

    saved = {"save_strategy": trainer.args.save_strategy,
             "load_best_model_at_end": trainer.args.load_best_model_at_end}
    trainer.args.save_strategy = SaveStrategy.NO
    trainer.args.load_best_model_at_end = False
    return saved


def subsample(dataset, rows: int, seed: int = 0, label_column: str = "labels"):
    """At most `rows` rows of `dataset` for the search, drawn at random (seeded) in each label's
    share, so the search sees the class balance the final training sees. 0 or more rows than
    there are: the whole dataset."""
    import numpy as np

    if rows < 0:
        raise ValueError(f"hpo_train_rows must be 0 (all rows) or positive, got {rows!r}")
    if not rows or rows >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset[label_column])
    chosen = []
    classes, counts = np.unique(labels, return_counts=True)
    shares = np.floor(counts / len(labels) * rows).astype(int)
    shares[np.argmax(counts)] += rows - shares.sum()  # rounding goes to the largest class
    for value, share in zip(classes, shares):
        members = np.flatnonzero(labels == value)
        chosen += rng.choice(members, size=min(share, len(members)), replace=False).tolist()
    return dataset.select(sorted(chosen))


# Assumed sustained training throughput, for the time estimate only: a T4 does 65 TFLOP/s in
# fp16 at its peak and encoder fine-tuning reaches about a quarter of it; a CPU core a few tens
# of GFLOP/s. A faster GPU (A100, H100) finishes correspondingly sooner.
ASSUMED_TFLOPS = {"cuda": 15.0, "cpu": 0.05}
CHECKPOINT_BYTES_PER_PARAMETER = 12  # fp32 weights (4) + AdamW's two moments (8)


def max_epochs(space: dict, default: float) -> float:
    """The most epochs a trial can train: the top of `epochs` in the space, else `default`."""
    spec = space.get("epochs", space.get("num_train_epochs"))
    if isinstance(spec, list):
        return float(max(spec))
    if isinstance(spec, dict):
        return float(spec["high"])
    return float(default)


def expected_cost(parameters: int, trials: int, train_rows: int, eval_rows: int,
                  tokens_per_row: float, epochs: float, device: str = "cuda",
                  checkpoints_per_trial: int = 2) -> dict:
    """What a search will cost, before it starts: compute as 6 x parameters x tokens for training
    (forward and backward) and 2 x parameters x tokens for each evaluation, at most `epochs`
    epochs per trial, over `ASSUMED_TFLOPS[device]`; disk as the checkpoints trials would save
    (none now) against what they saved before (`checkpoints_per_trial` x 12 bytes per parameter
    each)."""
    tokens = tokens_per_row * epochs
    flops = trials * (6 * parameters * train_rows * tokens + 2 * parameters * eval_rows * tokens)
    seconds = flops / (ASSUMED_TFLOPS.get(device, ASSUMED_TFLOPS["cuda"]) * 1e12)
    checkpoint = CHECKPOINT_BYTES_PER_PARAMETER * parameters
    return {"trials": trials, "train_rows": train_rows, "max_epochs": epochs,
            "tokens_per_row": tokens_per_row, "pflop": flops / 1e15, "hours": seconds / 3600,
            "assumed_tflops": ASSUMED_TFLOPS.get(device, ASSUMED_TFLOPS["cuda"]),
            "checkpoint_gb": checkpoint / 1e9, "disk_gb": 0.0,
            "disk_gb_if_trials_kept_checkpoints": trials * checkpoints_per_trial * checkpoint / 1e9}
