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

The study lives in a database (`storage`, the notebooks' `hpo_storage`), so a search outlives
its process: by default a SQLite file in the run folder (`hpo.sqlite3`), or any SQLAlchemy URL
Optuna's `RDBStorage` takes (`postgresql://user@host/db`, `mysql+pymysql://...`).

- **Resumable.** A search killed after some trials and rerun with the same parameters loads the
  stored study, keeps its finished trials and runs only those still missing: `n_trials` is the
  number of COMPLETE trials the study must reach, not the number this process runs. A rerun of a
  finished search runs none and reports the stored best.
- **Shared.** Processes launched with the same parameters (on one machine with SQLite, on
  several with a database server) open the same study and split the trials; the total stays
  `n_trials`. Each trial, as it starts, counts the COMPLETE trials and the RUNNING ones started
  before it: with the total reached it is dropped (state PRUNED, user attribute `skipped`) and its
  process stops; while running ones could still reach it, it waits for them, so a failure there is
  made up for. Each trial's random draws are seeded by (seed, trial number), so two processes
  never try the same settings by sharing a seed, and one process with a seed repeats itself.
- **A killed process's trials.** Failed trials are not counted. A trial left RUNNING by a killed
  process stops sending its heartbeat (`HEARTBEAT_SECONDS`); after `GRACE_SECONDS` without one
  Optuna marks it FAIL (`fail_stale_trials`, run as each trial starts) and it is not counted; until
  then a trial that needs its place waits for it.
- **Same search, same study.** The settings that define the search (space, metric, direction,
  seed; the notebook adds the model, the data and the row counts) are stored with the study; a
  study of the same name made with other settings stops the run with an error naming them. The
  notebook's default study name carries a hash of them, so changing them starts a new study in
  the same file.
- **SQLite's limits.** It serialises writers with a file lock: a few processes on one machine are
  fine (each waits up to 60 s for the lock), dozens are not, and a file on a network file system
  (NFS, a Kaggle dataset, a cloud bucket mount) may lock unreliably or not at all. Several
  machines need a database server (PostgreSQL, MySQL) that all of them reach.
- **Credentials.** A password in the URL is masked (`***`) wherever the search prints or records
  the storage, but papermill writes parameters into the executed notebook: keep it out of the URL
  (PostgreSQL's client reads `PGPASSWORD` or `~/.pgpass`), or write `env:NAME` to read the whole
  URL from an environment variable or Kaggle/Colab secret.
- **Several processes in one training run (DDP)** search as before: the main process counts the
  trials missing when it starts and the others follow its trials; such a run does not wait for
  or stop at trials of other launches sharing the study, so two multi-process launches on one
  study can run past the total.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import time
import warnings
from pathlib import Path

from nbutils.run.secrets import get_secret, redact_url

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
               seed: int = 0, storage: str | None = None, study_name: str = "search",
               settings: dict | None = None, heartbeat_seconds: int | None = None,
               grace_seconds: int | None = None, poll_seconds: float | None = None):
    """Bring the study to `n_trials` COMPLETE trials; return (best settings by space name,
    objective, table of all the study's trials, what was searched where).

    `metric` is a key of `trainer.evaluate()` without the `eval_` prefix (e.g. "roc_auc"); each
    trial is scored by its last evaluation on the trainer's eval set (validation). `storage`: a
    database URL (see `storage_url`) holding the study `study_name`, resumed and shared as the
    module says; None keeps it in this process's memory (nothing to resume). `settings` define the
    search (default: `search_settings(space, metric, direction, seed)`). The best is the best
    COMPLETE trial of the whole study, whichever process ran it. The table (a DataFrame) has one
    row per trial of the study: number, settings, objective, state, and the process that ran it.
    The last dict says where the study is (`storage`, without credentials), its name, the trials
    asked, complete in the study and run to completion by this process.
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
    settings = _as_stored(settings if settings is not None else search_settings(space, metric, direction, seed))
    if not study_name:
        raise ValueError("hpo_study: the study needs a name (empty: the notebook derives one)")
    main, shared = _main_process(trainer), trainer.args.world_size > 1
    worker = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"  # this call: host, process, tag
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(metrics: dict) -> float:
        key = metric if metric.startswith("eval_") else f"eval_{metric}"
        if key not in metrics:
            raise KeyError(f"hpo_metric={metric!r}: the evaluation reports no {key!r}; it reports "
                           + ", ".join(sorted(metrics)))
        return float(metrics[key])

    # Only the main process opens the database; the others of a DDP run follow its trials.
    study = missing = None
    if main:
        try:
            store = (open_storage(storage, heartbeat_seconds, grace_seconds) if storage is not None
                     else optuna.storages.InMemoryStorage())
            study = open_study(store, study_name, direction, seed, settings, shown=_shown(storage))
            missing = max(0, n_trials - _count(study, "COMPLETE"))
            print(f"search: study {study_name!r} in {_shown(storage)}: {_count(study, 'COMPLETE')} of "
                  f"{n_trials} trials complete, {missing} to run")
        except ValueError as error:  # a bad storage or study: every process of a DDP run stops
            missing = error
    missing = _from_main(missing, shared)
    if isinstance(missing, Exception):
        raise missing
    if missing:
        gate = TrialGate(hp_space, n_trials, worker, admit=not shared,
                         poll_seconds=poll_seconds if poll_seconds is not None else POLL_SECONDS)
        saved = _without_checkpoints(trainer)
        try:
            trainer.hyperparameter_search(
                hp_space=gate, compute_objective=objective, n_trials=missing, direction=direction,
                backend="optuna", sampler=trial_seeded_sampler(seed),
                storage=store if main else None, study_name=study_name, load_if_exists=True)
        finally:
            for name, value in saved.items():
                setattr(trainer.args, name, value)
    result = None
    if main:
        trials = study.get_trials(deepcopy=False)
        table = pd.DataFrame([{"trial": t.number, **t.params, "objective": t.value, "state": t.state.name,
                               "worker": t.user_attrs.get("worker")} for t in trials])
        best = study.best_trial  # over every COMPLETE trial of the study, by the validation objective
        info = {"storage": describe_storage(storage), "study": study_name, "trials_asked": n_trials,
                "trials_complete": _count(study, "COMPLETE"),
                "trials_this_process": sum(t.state.name == "COMPLETE" and t.user_attrs.get("worker") == worker
                                           for t in trials),
                "best_trial": best.number, "worker": worker}
        result = (dict(best.params), float(best.value), table, info)
    return _from_main(result, shared)


def _without_checkpoints(trainer) -> dict:
    """Make the trainer's trials save nothing (no checkpoint, so no best one to load back);
    returns the settings changed, to restore."""
    from transformers.trainer_utils import SaveStrategy

    saved = {"save_strategy": trainer.args.save_strategy,
             "load_best_model_at_end": trainer.args.load_best_model_at_end}
    trainer.args.save_strategy = SaveStrategy.NO
    trainer.args.load_best_model_at_end = False
    return saved


# --- the study's database: resumable, shared (see the module's docstring)

STORAGE_FILE = "hpo.sqlite3"  # the default study database, in the run folder
HEARTBEAT_SECONDS = 60  # a running trial writes a heartbeat this often ...
GRACE_SECONDS = 180  # ... and is taken for dead (its process killed) after this long without one
POLL_SECONDS = 10.0  # a trial waiting for running ones looks again this often
SQLITE_LOCK_WAIT_SECONDS = 60  # a SQLite writer waits this long for the file's lock
LOCK_WAIT_SECONDS = 300  # a process waits this long for another to finish creating a new SQLite file


def storage_url(hpo_storage: str, run_dir) -> str:
    """The database URL of the search's study. Empty: a SQLite file in the run folder
    (`<run_dir>/hpo.sqlite3`); `env:NAME`: the URL held by that environment variable or Kaggle /
    Colab secret (keeps a password out of the parameters); else the URL as given."""
    if not hpo_storage:
        return f"sqlite:///{(Path(run_dir) / STORAGE_FILE).resolve()}"
    if hpo_storage.startswith("env:"):
        url = get_secret(hpo_storage[len("env:"):])
        if not url:
            raise ValueError(f"hpo_storage={hpo_storage!r}: no environment variable or secret "
                             f"{hpo_storage[len('env:'):]!r} holds a database URL")
        return url
    return hpo_storage


def describe_storage(url: str | None) -> dict:
    """Where a study lives, without credentials: {"kind": "sqlite" / "postgresql" / ... / "memory",
    "url": the URL with its password masked}."""
    if url is None:
        return {"kind": "memory", "url": None}
    from sqlalchemy.engine import make_url

    try:
        kind = make_url(url).get_backend_name()
    except Exception:
        kind = "unknown"
    return {"kind": kind, "url": redact_url(url)}


def _shown(url: str | None) -> str:
    return "this process's memory" if url is None else redact_url(url)


def open_storage(url: str, heartbeat_seconds: int | None = None, grace_seconds: int | None = None):
    """Optuna's RDBStorage on `url`, with heartbeats (a killed process's running trials are failed
    after `grace_seconds`). A URL that cannot be parsed or opened stops here with an error naming
    hpo_storage, the URL's password masked."""
    import optuna
    import sqlalchemy
    from filelock import FileLock
    from sqlalchemy.engine import make_url

    shown = redact_url(url)
    expected = ("expected empty (a SQLite file in the run folder), sqlite:///path/to/file.sqlite3, "
                "an RDB URL such as postgresql://user@host/db, or env:NAME")
    try:
        parsed = make_url(url)
    except Exception:
        raise ValueError(f"hpo_storage={shown!r} is not a database URL: {expected}") from None
    engine_kwargs = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError(f"hpo_storage={shown!r}: an in-memory SQLite database neither outlives the "
                             f"process nor is shared; {expected}")
        folder = Path(parsed.database).expanduser().parent
        if not folder.is_dir():
            raise ValueError(f"hpo_storage={shown!r}: the folder {str(folder)!r} of the SQLite file does not exist")
        engine_kwargs["connect_args"] = {"timeout": SQLITE_LOCK_WAIT_SECONDS}
    # Processes that open one new database at once race to create its tables and to stamp its
    # schema version (seen in CI: "UNIQUE constraint failed: alembic_version.version_num"). For a
    # SQLite file they take turns under a lock file beside it; for a server database the loser of
    # the race tries again, and finds the tables made.
    lock = contextlib.nullcontext()
    if parsed.get_backend_name() == "sqlite":
        lock_file = Path(str(Path(parsed.database).expanduser()) + ".lock")
        try:
            lock_file.touch()  # FileLock would wait forever on a folder it cannot write
        except OSError as error:
            raise ValueError(f"hpo_storage={shown!r}: cannot write {str(lock_file)!r} beside the SQLite file "
                             f"({type(error).__name__}: {error.strerror}); {expected}") from None
        lock = FileLock(str(lock_file), timeout=LOCK_WAIT_SECONDS)
    collided = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError)
    for attempt in range(3):
        try:
            with lock, warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_seconds or HEARTBEAT_SECONDS,
                    grace_period=grace_seconds or GRACE_SECONDS)
        except Exception as error:
            if isinstance(error, collided) and attempt < 2 and any(
                    sign in str(error).lower() for sign in ("already exists", "locked", "unique", "duplicate")):
                time.sleep(1 + attempt)
                continue
            failure = error
            break
    message = str(failure).replace(parsed.password, "***") if parsed.password else str(failure)
    message = redact_url(message).splitlines()[0] if message else ""
    hint = (" (the database's Python driver must be installed, e.g. psycopg2-binary for PostgreSQL)"
            if isinstance(failure, ImportError) else "")
    raise ValueError(f"hpo_storage={shown!r}: cannot open the database ({type(failure).__name__}: "
                     f"{message}){hint}; {expected}") from None


# Notebook parameters that change neither what a trial trains nor how it is scored: a stored study
# made with other values of these is the same search (and processes that share it may differ in
# them: their run folders, their process counts, where they log).
NOT_SEARCH_SETTINGS = frozenset({
    "project", "profile", "output_dir", "hpo_trials", "hpo_storage", "hpo_study", "resume",
    "save_every_steps", "logging_steps", "report_to", "push_to_hub", "hub_repo_id", "hub_private",
    "num_processes", "distributed", "eval_batch_size", "cv_folds", "group_metrics_column",
    "threshold_from_validation", "cpu_threads"})


def recipe(config: dict) -> dict:
    """The notebook parameters that make a trial what it is: all but `NOT_SEARCH_SETTINGS`, with
    any credential in a URL masked (they are stored with the study)."""
    from nbutils.run.secrets import redact_config

    return redact_config({name: value for name, value in config.items() if name not in NOT_SEARCH_SETTINGS})


def search_settings(space: dict, metric: str, direction: str, seed: int, **more) -> dict:
    """What makes two searches the same search (stored with the study and checked when it is
    loaded): the space, metric, direction and seed, plus anything the caller adds (the model, the
    data's fingerprint, the rows searched on)."""
    return {"space": space, "metric": metric, "direction": direction, "seed": seed, **more}


def _as_stored(settings: dict) -> dict:
    """`settings` as the study stores them (JSON: tuples become lists, keys strings)."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def settings_digest(settings: dict) -> str:
    """A short hash of the search's settings."""
    return hashlib.sha256(json.dumps(_as_stored(settings), sort_keys=True).encode()).hexdigest()[:8]


def study_name(project: str, model_name: str, seed: int, settings: dict) -> str:
    """The default study name, `<project>:<model>:seed<seed>:<hash of the settings>`: the same
    for every process launched with the same parameters, another one when the search changes."""
    return f"{project}:{model_name}:seed{seed}:{settings_digest(settings)}"


def open_study(storage, name: str, direction: str, seed: int, settings: dict, shown: str = ""):
    """Create the study `name` in `storage`, or load it if it exists (made by an earlier or a
    parallel process); a stored study made with other settings stops here, naming them."""
    import optuna

    settings = _as_stored(settings)
    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                load_if_exists=True, sampler=trial_seeded_sampler(seed))
    stored = study.user_attrs.get("search_settings")
    if stored is None:
        study.set_user_attr("search_settings", settings)
    elif stored != settings:
        differ = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise ValueError(f"hpo_study={name!r} in hpo_storage {shown}: the stored study was made by a "
                         f"search with other settings ({', '.join(differ)} differ); give hpo_study another "
                         "name (or leave it empty) to start a new study, or delete the stored one")
    if study.direction.name.lower() != direction:
        raise ValueError(f"hpo_study={name!r}: the stored study {study.direction.name.lower()}s, "
                         f"hpo_direction asks to {direction}")
    return study


def _count(study, state: str) -> int:
    return sum(t.state.name == state for t in study.get_trials(deepcopy=False))


def _main_process(trainer) -> bool:
    return trainer.args.process_index == 0


def _from_main(value, shared: bool):
    """`value` as the main process has it, in every process of a multi-process run."""
    if not shared:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def trial_seeded_sampler(seed: int = 0, **options):
    """Optuna's TPE sampler whose random draws are seeded by (seed, trial number) at the start of
    each trial: processes sharing a study with one seed do not repeat each other's settings (a
    plain seeded sampler in each would draw the same first ten), and one process repeats itself.
    `options` are `TPESampler`'s."""
    return _trial_seeded_tpe()(seed=seed, **options)


@functools.cache
def _trial_seeded_tpe():
    import inspect

    import numpy as np
    import optuna
    from optuna.trial import TrialState

    tpe = optuna.samplers.TPESampler
    startup_default = inspect.signature(tpe).parameters["n_startup_trials"].default

    class TrialSeededTPESampler(optuna.samplers.BaseSampler):
        """A `TPESampler` made afresh for each trial (it keeps nothing between trials but its
        random state; what it learns it reads from the study), seeded from (seed, trial number).

        TPE draws a trial's settings at random until `n_startup_trials` trials have finished
        (COMPLETE or PRUNED), and from its model after that: the first of the two seeds drawn
        for the trial seeds the model's draws, the second the random ones."""

        def __init__(self, seed: int = 0, **options):
            self.seed, self.options = seed, options
            self.startup_trials = options.get("n_startup_trials", startup_default)
            self.current = tpe(seed=seed, **options)

        def before_trial(self, study, trial) -> None:
            model_seed, random_seed = np.random.SeedSequence([self.seed, trial.number]).generate_state(2)
            finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            seed = random_seed if finished < self.startup_trials else model_seed
            self.current = tpe(seed=int(seed), **self.options)
            self.current.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.current.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.current.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.current.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.current.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.current.reseed_rng()

    return TrialSeededTPESampler


class TrialGate:
    """The search space, run as each trial starts: it admits the trial, drops it, or waits.

    Counting the COMPLETE trials of the study and the RUNNING ones started before this one (by
    any process): with `total` complete the trial is dropped (PRUNED, user attribute `skipped`)
    and this process's search stops; while complete + running ahead reach `total` it waits (one
    of those may fail; a dead process's trial is failed by Optuna once its heartbeat is stale);
    otherwise it runs, tagged with this process (`worker`). `admit=False` (a DDP run, whose other
    processes follow every trial of the main one) only tags. Called twice for one trial in a DDP
    run; the second call only samples."""

    def __init__(self, hp_space, total: int, worker: str, admit: bool = True,
                 poll_seconds: float = POLL_SECONDS):
        self.hp_space, self.total, self.worker = hp_space, total, worker
        self.admit, self.poll_seconds = admit, poll_seconds
        self.seen: set[int] = set()

    def __call__(self, trial) -> dict:
        import optuna

        if isinstance(trial, optuna.trial.Trial) and trial.number not in self.seen:
            if self.admit:
                self._wait_for_a_place(trial)
            trial.set_user_attr("worker", self.worker)
            self.seen.add(trial.number)
        return self.hp_space(trial)

    def _wait_for_a_place(self, trial) -> None:
        import optuna
        from optuna.trial import TrialState

        study, said = trial.study, False
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # a killed process's trials: FAIL
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            ahead = [t.number for t in trials if t.state == TrialState.RUNNING and t.number < trial.number]
            if complete >= self.total:
                trial.set_user_attr("skipped", f"the study had its {self.total} complete trials")
                study.stop()  # this process's search ends after this trial
                raise optuna.TrialPruned(f"the study has its {self.total} complete trials")
            if complete + len(ahead) < self.total:
                return
            if not said:
                print(f"search: trial {trial.number} waits: {complete} of {self.total} trials complete, "
                      f"trial(s) {ahead} still running (in another process, or left by a killed one "
                      "until its heartbeat is stale); it runs if one of them fails")
                said = True
            time.sleep(self.poll_seconds)


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
