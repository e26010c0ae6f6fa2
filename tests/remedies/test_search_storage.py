"""The hyperparameter search's study in a database (issue 19): a stopped or killed search rerun
continues from the stored study, processes sharing one study split its trials, the total stays
as asked, and a bad or credentialed storage URL is handled without leaking the password.

The searches run `search.run_search` on the tiny BERT through `Trainer.hyperparameter_search`,
as the notebook does (tests/remedies/search_worker.py, in this process or as separate processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from transformers import TrainerCallback

from conftest import ROOT
from nbutils.run import record, secrets
from nbutils.remedies import search
from search_worker import SPACE, make_trainer, run

WORKER = ROOT / "tests" / "remedies" / "search_worker.py"


def stored(url: str, name: str):
    return optuna.load_study(study_name=name, storage=url)


def states(study) -> list[str]:
    return [t.state.name for t in study.trials]


class RaiseAt(TrainerCallback):
    """Stop the search with an error as this process's trial `k` (from 0) starts training."""

    def __init__(self, k: int):
        self.k, self.started = k, 0

    def on_train_begin(self, args, state, control, **kwargs):
        if self.started == self.k:
            raise RuntimeError("stopped by the test")
        self.started += 1


def test_a_stopped_search_continues_from_the_stored_study(cache, tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.sqlite3'}"
    with pytest.raises(RuntimeError, match="stopped by the test"):
        run(cache, url, "s", 4, tmp_path / "a", [RaiseAt(2)])
    first = stored(url, "s")
    assert states(first) == ["COMPLETE", "COMPLETE", "FAIL"]
    kept = [(t.params, t.value) for t in first.trials[:2]]

    best, objective, table, info = run(cache, url, "s", 4, tmp_path / "b")
    study = stored(url, "s")
    # The finished trials are kept as they were, the failed one is not counted, and only the two
    # missing trials ran: 4 COMPLETE in all, as asked.
    assert [(t.params, t.value) for t in study.trials[:2]] == kept
    assert states(study) == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert info["trials_complete"] == 4 and info["trials_this_process"] == 2 and info["trials_asked"] == 4
    assert list(table["state"]) == states(study)
    # The best is over every COMPLETE trial of the study (the validation loss, minimised).
    complete = table[table["state"] == "COMPLETE"]
    assert objective == complete["objective"].min() == study.best_value
    assert best == study.best_params and info["best_trial"] == study.best_trial.number
    assert info["storage"] == {"kind": "sqlite", "url": url} and info["study"] == "s"

    # A rerun of the finished search runs nothing and reports the same best.
    again = run(cache, url, "s", 4, tmp_path / "c")
    assert again[3]["trials_this_process"] == 0 and len(stored(url, "s").trials) == 5
    assert again[:2] == (best, objective)
    # Asking for more trials continues the same study.
    more = run(cache, url, "s", 5, tmp_path / "d")
    assert more[3]["trials_complete"] == 5 and more[3]["trials_this_process"] == 1


def _worker(cache, url, study, trials, *options):
    return subprocess.Popen([sys.executable, str(WORKER), str(cache), url, study, str(trials), *options],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _summary(process) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_killed_search_continues_and_its_running_trial_is_not_counted(cache, tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.sqlite3'}"
    killed = _worker(cache, url, "s", 4, "--kill-at-trial", "2", "--output", str(tmp_path / "a"))
    killed.communicate(timeout=600)
    assert killed.returncode == -9  # SIGKILL as its third trial started training
    study = stored(url, "s")
    assert states(study) == ["COMPLETE", "COMPLETE", "RUNNING"]  # left running by the dead process
    kept = [(t.params, t.value) for t in study.trials[:2]]

    # The rerun keeps the two finished trials; the dead process's trial is failed once its
    # heartbeat is stale (10 s here) and replaced: 4 COMPLETE, as asked.
    best, objective, table, info = run(cache, url, "s", 4, tmp_path / "b")
    study = stored(url, "s")
    assert [(t.params, t.value) for t in study.trials[:2]] == kept
    assert study.trials[2].state.name == "FAIL"
    assert sum(s == "COMPLETE" for s in states(study)) == info["trials_complete"] == 4
    assert info["trials_this_process"] == 2 and objective == study.best_value


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study_and_split_its_trials(cache, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # No trial is killed here: a grace period of a minute keeps a live trial live on a loaded machine.
    workers = [_worker(cache, url, "shared", 5, "--barrier", str(barrier), "2", "--grace", "60",
                       "--output", str(tmp_path / n))
               for n in ("a", "b")]
    summaries = [_summary(w) for w in workers]
    study = stored(url, "shared")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    # The total stays as asked, both processes contributed, and together they ran it all.
    assert len(complete) == 5
    done = [s["info"]["trials_this_process"] for s in summaries]
    assert min(done) >= 1 and sum(done) == 5
    assert {t.user_attrs["worker"] for t in complete} == {s["info"]["worker"] for s in summaries}
    # A trial started when the total was reached is dropped, not run; nothing else is left over.
    others = [t for t in study.trials if t.state.name != "COMPLETE"]
    assert all(t.state.name == "PRUNED" and "skipped" in t.user_attrs for t in others)
    # No two trials tried the same settings (each draws with its own trial number), and both
    # processes report the study's best.
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 5
    for s in summaries:
        assert s["objective"] == study.best_value and s["best"] == study.best_params
        assert s["info"]["trials_complete"] == 5


# --- the gate each trial passes as it starts


def _study_with(complete: int):
    study = optuna.create_study(direction="minimize")
    for i in range(complete):
        study.add_trial(optuna.trial.create_trial(
            params={"x": float(i)}, distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
            value=float(i)))
    return study


def _hp_space(trial):
    return {"learning_rate": trial.suggest_float("x", 0, 10)}


def test_a_trial_started_when_the_total_is_reached_is_dropped_and_the_search_stops():
    study = _study_with(2)
    gate = search.TrialGate(_hp_space, total=2, worker="me")
    study.optimize(lambda trial: gate(trial)["learning_rate"], n_trials=5)
    assert states(study) == ["COMPLETE", "COMPLETE", "PRUNED"]  # one dropped, then it stopped
    assert "skipped" in study.trials[2].user_attrs


def test_a_trial_waits_for_a_running_one_and_runs_when_that_one_fails(monkeypatch, capsys):
    study = _study_with(1)
    elsewhere = study.ask()  # running in "another process"
    waits = []

    def sleep(seconds):  # what the other process does while this trial waits: its trial fails
        waits.append(seconds)
        study.tell(elsewhere, state=optuna.trial.TrialState.FAIL)

    monkeypatch.setattr(search.time, "sleep", sleep)
    gate = search.TrialGate(_hp_space, total=2, worker="me", poll_seconds=0.5)
    study.optimize(lambda trial: gate(trial)["learning_rate"], n_trials=1)
    assert waits == [0.5] and "trial 2 waits: 1 of 2 trials complete, trial(s) [1] still running" \
        in capsys.readouterr().out
    assert states(study) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[2].user_attrs["worker"] == "me"


def test_processes_sharing_a_seed_draw_different_settings_and_one_repeats_itself():
    def first_two(make_sampler):
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, study_name="s")
        # two "processes": each its own sampler with the same seed, on one study
        a = optuna.load_study(study_name="s", storage=storage, sampler=make_sampler())
        b = optuna.load_study(study_name="s", storage=storage, sampler=make_sampler())
        hp_space = search.optuna_space(SPACE)
        drawn = [hp_space(a.ask()), hp_space(b.ask())]
        assert study.trials
        return drawn

    plain = first_two(lambda: optuna.samplers.TPESampler(seed=0))
    assert plain[0] == plain[1], "a plain seeded sampler in each process repeats the other's draws"
    seeded = first_two(lambda: search.trial_seeded_sampler(0))
    assert seeded[0] != seeded[1]
    assert first_two(lambda: search.trial_seeded_sampler(0)) == seeded  # reproducible by seed
    assert first_two(lambda: search.trial_seeded_sampler(1)) != seeded


def test_one_seed_repeats_its_search_past_the_random_startup_trials():
    """After `n_startup_trials` TPE draws from its model of the finished trials; those draws too
    come from the trial's own seed: the same seed, the same settings, trial by trial."""
    def settings(seed):
        study = optuna.create_study(sampler=search.trial_seeded_sampler(seed, n_startup_trials=2))
        hp_space = search.optuna_space(SPACE)
        study.optimize(lambda trial: hp_space(trial)["learning_rate"], n_trials=5)
        return [t.params for t in study.trials]

    first = settings(0)
    assert settings(0) == first
    assert settings(1)[2:] != first[2:]  # the model's draws follow the seed too
    assert len({str(p) for p in first}) == 5


# --- which study, where


def test_the_default_storage_is_a_sqlite_file_in_the_run_folder(tmp_path, monkeypatch):
    assert search.storage_url("", tmp_path) == f"sqlite:///{tmp_path.resolve()}/hpo.sqlite3"
    assert search.storage_url("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"
    monkeypatch.setenv("HPO_DB", "postgresql://u:pw@h/db")
    assert search.storage_url("env:HPO_DB", tmp_path) == "postgresql://u:pw@h/db"
    with pytest.raises(ValueError, match="hpo_storage='env:NO_SUCH_DB': no environment variable or secret"):
        search.storage_url("env:NO_SUCH_DB", tmp_path)


def test_the_default_study_name_follows_project_model_seed_and_the_search_settings():
    settings = search.search_settings(SPACE, "roc_auc", "maximize", 42, model="m")
    name = search.study_name("detect_ai_text/roberta_search", "FacebookAI/roberta-base", 42, settings)
    assert name.startswith("detect_ai_text/roberta_search:FacebookAI/roberta-base:seed42:")
    assert name == search.study_name("detect_ai_text/roberta_search", "FacebookAI/roberta-base", 42,
                                     dict(reversed(list(settings.items()))))  # same settings, same name
    other = search.search_settings({**SPACE, "weight_decay": [0.0]}, "roc_auc", "maximize", 42, model="m")
    assert search.study_name("detect_ai_text/roberta_search", "FacebookAI/roberta-base", 42, other) != name


def test_a_stored_study_of_another_search_is_an_error_naming_hpo_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.sqlite3'}"
    storage = search.open_storage(url)
    search.open_study(storage, "s", "maximize", 0, search.search_settings(SPACE, "roc_auc", "maximize", 0))
    search.open_study(storage, "s", "maximize", 0, search.search_settings(SPACE, "roc_auc", "maximize", 0))
    with pytest.raises(ValueError, match=r"hpo_study='s' .*other settings \(metric, seed differ\)"):
        search.open_study(storage, "s", "maximize", 1, search.search_settings(SPACE, "loss", "maximize", 1))


def test_processes_opening_one_new_sqlite_file_take_turns_under_a_lock_beside_it(tmp_path):
    # CI once failed with "UNIQUE constraint failed: alembic_version.version_num": two processes
    # created the same new database at once (4 processes at once failed 2 runs in 5 before the lock).
    import threading

    from filelock import FileLock

    database = tmp_path / "hpo.sqlite3"
    opened = threading.Event()
    with FileLock(str(database) + ".lock"):  # another process is creating the tables
        opener = threading.Thread(target=lambda: (search.open_storage(f"sqlite:///{database}"), opened.set()))
        opener.start()
        assert not opened.wait(2.0), "the database was opened while another process held its lock"
    assert opened.wait(60), "the database was not opened once the lock was free"
    opener.join()


def test_a_collision_creating_a_server_database_is_tried_again(monkeypatch):
    import sqlalchemy

    calls = []

    def storage(url, **options):
        calls.append(url)
        if len(calls) == 1:  # another process stamped the schema version first
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception(
                "duplicate key value violates unique constraint"))
        return "opened"

    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    monkeypatch.setattr(search.time, "sleep", lambda seconds: None)
    assert search.open_storage("postgresql://alice@db.example/hpo") == "opened" and len(calls) == 2


BAD_STORAGE = [
    ("not a url", "is not a database URL"),
    ("nosuchdb://host/db", "cannot open the database"),
    ("sqlite:///" + "/no/such/folder/hpo.sqlite3", "the folder '/no/such/folder' of the SQLite file does not exist"),
    ("sqlite:///" + "/proc/hpo.sqlite3", "cannot write '/proc/hpo.sqlite3.lock' beside the SQLite file"),
    ("sqlite://", "in-memory SQLite database"),
    ("postgresql://alice:s3cr3t-pw@127.0.0.1:9/db", "cannot open the database"),  # no driver here; a server that is not there elsewhere
]


@pytest.mark.parametrize("url, message", BAD_STORAGE)
def test_a_bad_storage_url_is_an_error_naming_hpo_storage_without_the_password(url, message):
    with pytest.raises(ValueError, match=message) as error:
        search.open_storage(url)
    assert str(error.value).startswith(f"hpo_storage={secrets.redact_url(url)!r}")
    assert "s3cr3t" not in str(error.value) and error.value.__cause__ is None


def test_a_bad_storage_url_stops_the_search_before_any_trial(cache, tmp_path):
    trainer = make_trainer(cache, tmp_path)
    with pytest.raises(ValueError, match=r"hpo_storage='postgresql://alice:\*\*\*@127.0.0.1:9/db'"):
        search.run_search(trainer, SPACE, 2, "loss", "minimize",
                          storage="postgresql://alice:s3cr3t-pw@127.0.0.1:9/db")
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("url, shown", [
    ("postgresql://alice:s3cr3t@db.example:5432/hpo", "postgresql://alice:***@db.example:5432/hpo"),
    ("mysql+pymysql://bob:p%40ss@h/d?charset=utf8&password=s3cr3t", "mysql+pymysql://bob:***@h/d?charset=utf8&password=***"),
    ("postgresql://alice@db/hpo?sslmode=require", "postgresql://alice@db/hpo?sslmode=require"),
    ("sqlite:////tmp/hpo.sqlite3", "sqlite:////tmp/hpo.sqlite3"),
    ("plain text", "plain text"),
])
def test_credentials_in_a_url_are_masked(url, shown):
    assert secrets.redact_url(url) == shown
    assert search.describe_storage(url)["url"] == shown


def test_the_run_record_never_holds_a_password_from_a_url_parameter():
    config = {"hpo_storage": "postgresql://alice:s3cr3t@db/hpo", "epochs": 2, "extra": ["a://u:s3cr3t@h"]}
    rec = record.make_record(project="p", profile="smoke", task="t", model="m",
                             data={"source": "s", "train": 1, "validation": 1, "test": 1},
                             metrics={"roc_auc": 0.5, "intervals": {"roc_auc": {"low": 0.5, "high": 0.5, "level": 0.95, "resamples": 1}},
                                      "measured_on": {"roc_auc": "test"}}, primary_metric="roc_auc",
                             train={"runtime_s": 1, "samples_per_s": 1, "epochs": None, "processes": 1},
                             parameters={"trainable": 1, "total": 1}, seed=0, config=config)
    assert "s3cr3t" not in json.dumps(rec)
    assert rec["config"]["hpo_storage"] == "postgresql://alice:***@db/hpo" and rec["config"]["epochs"] == 2


@pytest.mark.slow
def test_a_two_process_ddp_run_searches_one_study_and_every_process_gets_the_best(cache, tmp_path):
    """Several processes of one training run (DDP over gloo): the main process opens the study,
    the other follows its trials, and both come back with the study's best (before, the other
    process got nothing back from Trainer.hyperparameter_search and failed)."""
    import os

    import socket

    with socket.socket() as free:  # a port no other run holds
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'hpo.sqlite3'}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(WORKER), str(cache), url, "ddp", "2", "--output", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"best"')]
    study = stored(url, "ddp")
    assert len(summaries) == 2 and summaries[0] == summaries[1]
    assert states(study) == ["COMPLETE", "COMPLETE"] and summaries[0]["objective"] == study.best_value
    assert summaries[0]["info"]["trials_this_process"] == 2
