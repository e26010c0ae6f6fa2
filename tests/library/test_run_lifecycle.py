"""A run's folder across the sequence a user goes through: run, rerun, change a training
parameter, fail, kill and rerun, switch to several processes. What is on disk must be true: the
record in `output_dir` describes exactly what the checkpoints beside it were trained with.

These drive `nbutils.run.setup` and `nbutils.run.checkpoints` with a fake training step (a checkpoint
folder and a record written by hand); tests/notebooks/test_run_sequences.py runs the same
sequences through whole notebooks."""

import json
import random

import pytest

from nbutils.run import checkpoints, environment, record, setup

BASE = {"project": "demo/x", "profile": "smoke", "output_dir": "out/x", "learning_rate": 2.0e-3,
        "epochs": 4.0, "seed": 42, "model_name": "m", "resume": True, "report_to": "none",
        "threshold": 0.5, "distributed": "ddp", "push_to_hub": False, "hub_repo_id": ""}


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv(environment.KAGGLE_ROOT_VARIABLE, str(tmp_path / "no-kaggle"))
    return tmp_path


# --- the resume decision, a pure function --------------------------------------------------------

def test_the_identity_leaves_out_only_what_does_not_decide_training():
    identity = checkpoints.training_identity(BASE)
    assert set(identity["parameters"]) == {"learning_rate", "epochs", "seed", "model_name", "distributed"}
    assert identity["layout"] == {"processes": 1, "strategy": "single"}


def test_decide_resumes_exactly_when_nothing_that_trains_changed():
    """Property test: random parameter sets and random changes to them."""
    rng = random.Random(0)
    names = ["learning_rate", "epochs", "seed", "model_name", "batch_size", "lora_r", "max_length",
             *sorted(checkpoints.NOT_TRAINING)]
    values = [0, 1, 2.5, 3e-5, "a", "b", True, False, None, [1, 2], {"k": 1}]
    for _ in range(500):
        config = {n: rng.choice(values) for n in rng.sample(names, rng.randint(0, len(names)))}
        changed = dict(config)
        touched = rng.sample(names, rng.randint(0, 3))
        for name in touched:
            if rng.random() < 0.2:
                changed.pop(name, None)
            else:
                changed[name] = rng.choice(values)
        stored, current = checkpoints.training_identity(config), checkpoints.training_identity(changed)
        differing = {n for n in touched if n not in checkpoints.NOT_TRAINING
                     and config.get(n, "(unset)") != changed.get(n, "(unset)")}
        has, resume = rng.random() < 0.8, rng.random() < 0.8
        decision = checkpoints.decide(stored, current, has, resume)
        assert {d[0] for d in checkpoints.differences(stored, current)} == differing
        assert (decision.action == "resume") == (has and resume and not differing), (config, changed)
        if has and resume and differing:
            assert all(name in decision.reason for name in differing)


def test_a_checkpoint_of_another_process_layout_is_never_resumed(monkeypatch):
    one = checkpoints.training_identity(BASE)
    monkeypatch.setenv("WORLD_SIZE", "2")
    ddp = checkpoints.training_identity(BASE)
    fsdp = checkpoints.training_identity({**BASE, "distributed": "fsdp"})
    assert ddp["layout"] == {"processes": 2, "strategy": "ddp"}
    for stored, current in ((one, ddp), (ddp, fsdp), (fsdp, ddp)):
        decision = checkpoints.decide(stored, current, has_checkpoints=True)
        assert decision.action == "fresh" and ("processes" in decision.reason or "distributed" in decision.reason)
    assert checkpoints.decide(None, one, True).action == "fresh"  # who trained them is unknown


# --- the sequence, on disk -----------------------------------------------------------------------

def _train(run, steps=8, max_steps=8):
    """What `trainer.train` leaves: a checkpoint (`max_steps` reached or not)."""
    folder = run.dir / setup.CHECKPOINTS / f"checkpoint-{steps}"
    folder.mkdir(parents=True)
    (folder / checkpoints.STATE_FILE).write_text(json.dumps({"global_step": steps, "max_steps": max_steps}))
    (folder / "model.safetensors").write_text(f"weights of {run.dir.name}")


def _record(run, config, runtime_s=12.5):
    train = {"runtime_s": 0.0 if run.trained_nothing else runtime_s, "samples_per_s": 0.0 if run.trained_nothing else 40.0,
             "epochs": None, "processes": 1}
    rec = record.make_record(project="demo/x", profile="smoke", task="t", model=str(run.dir.parent / "m"),
                             data={"source": "data.csv", "train": 1, "validation": 1, "test": 1},
                             metrics={"m": 1.0, "intervals": {"m": {"low": 1.0, "high": 1.0, "level": 0.95, "resamples": 1}},
                                      "measured_on": {"m": "test"}}, primary_metric="m", train=train,
                             parameters={"trainable": 1, "total": 1}, seed=42, config=config, run=run)
    (run.dir / "model").mkdir(exist_ok=True)
    (run.dir / "model" / "weights").write_text(json.dumps(config["learning_rate"]))
    record.write_record(rec, run.dir)


def _start(config):
    return setup.start(config["project"], config["output_dir"], config, show=False)


def test_run_rerun_change_fail_and_rerun(local, capsys):
    final = local / "out" / "x"
    # 1. A first run trains and finishes: output_dir holds it whole, nothing else is left.
    run = _start(BASE)
    assert run.resume_from(True) is None
    _train(run)
    _record(run, BASE)
    run.finish()
    assert (final / record.RECORD_FILE).is_file() and not setup.attempt_folder(final).exists()
    assert checkpoints.read_identity(final) == checkpoints.training_identity(BASE)

    # 2. The same parameters again: nothing is trained, the record says so and keeps the figures.
    run = _start(BASE)
    assert checkpoints.complete_checkpoints(run.dir / setup.CHECKPOINTS)  # linked, not moved
    assert checkpoints.complete_checkpoints(final / setup.CHECKPOINTS)
    run.resume_from(True)
    assert run.trained_nothing
    _record(run, BASE)
    run.finish()
    rerun = record.read_record(final)
    assert rerun["train"]["resumed_finished"] is True and rerun["train"]["runtime_s"] == 12.5
    assert "NOTHING IS TRAINED" in capsys.readouterr().out

    # 3. A changed learning rate trains afresh, never on the old checkpoint; the earlier run stays
    #    whole until this one finishes.
    changed = {**BASE, "learning_rate": 1.0e-3, "epochs": 6.0}
    run = _start(changed)
    out = capsys.readouterr().out
    assert "learning_rate 0.002 -> 0.001" in out and "epochs 4.0 -> 6.0" in out
    assert run.resume_from(True) is None and not run.trained_nothing
    assert record.read_record(final)["config"]["learning_rate"] == 2.0e-3  # the earlier run, untouched
    # ... killed half way: a rerun continues it (same parameters), the earlier run still whole.
    _train(run, steps=4, max_steps=12)
    run = _start(changed)
    assert run.resume_from(True).endswith("checkpoint-4") and not run.trained_nothing
    _train(run, steps=12, max_steps=12)
    _record(run, changed, runtime_s=30.0)
    run.finish()
    published = record.read_record(final)
    assert published["config"]["learning_rate"] == 1.0e-3 and published["train"]["runtime_s"] == 30.0
    assert checkpoints.read_identity(final) == checkpoints.training_identity(changed)
    assert (final / "model" / "weights").read_text() == "0.001"

    # 4. A failing run after a good one leaves the good one whole, beside a named failed attempt.
    before = {p.relative_to(final): p.read_bytes() for p in final.rglob("*") if p.is_file()}
    run = _start({**BASE, "seed": 7})
    (run.dir / "model").mkdir()
    (run.dir / "model" / "weights").write_text("half written")
    with pytest.raises(RuntimeError, match="no metrics.json"):
        run.finish()  # the record was never written: nothing is published
    after = {p.relative_to(final): p.read_bytes() for p in final.rglob("*") if p.is_file()}
    assert after == before and setup.attempt_folder(final).is_dir()

    # 5. An unfinished run of other values is kept aside, never continued.
    _train(run, steps=2, max_steps=8)
    run = _start(changed)
    kept = [p.name for p in final.parent.iterdir() if p.name.startswith("x.incomplete-")]
    assert len(kept) == 1 and "kept in" in capsys.readouterr().out
    assert run.resume_from(True).endswith("checkpoint-12")  # the finished run's, linked in


def test_resume_false_trains_afresh_and_leaves_the_finished_run(local):
    run = _start(BASE)
    run.resume_from(True)
    _train(run)
    _record(run, BASE)
    run.finish()
    run = _start({**BASE, "resume": False})
    assert run.resume_from(False) is None
    assert not (run.dir / setup.CHECKPOINTS).exists()
    assert checkpoints.complete_checkpoints(run.final / setup.CHECKPOINTS)


def test_a_push_that_could_only_fail_after_training_stops_at_set_up(local, monkeypatch):
    with pytest.raises(ValueError, match="hub_repo_id is empty"):
        _start({**BASE, "push_to_hub": True})
    with pytest.raises(ValueError, match="no hub token"):
        _start({**BASE, "push_to_hub": True, "hub_repo_id": "me/model"})
    assert not (local / "out").exists()
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    _start({**BASE, "push_to_hub": True, "hub_repo_id": "me/model"})


def test_an_unwritable_output_dir_is_named_at_set_up(local):
    (local / "blocked").write_text("a file, not a folder")
    with pytest.raises(OSError, match="output_dir 'blocked/x'"):
        _start({**BASE, "output_dir": "blocked/x"})


def test_paths_in_the_record_are_relative_to_the_repository(local):
    run = _start(BASE)
    run.resume_from(True)
    _record(run, {**BASE, "output_dir": str(local / "out" / "x")})
    rec = record.read_record(run.dir)
    assert rec["model"] == "out/m" and rec["config"]["output_dir"] == "out/x"


def test_too_little_disk_for_the_checkpoints_is_said_at_set_up(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 1000)
    warning = setup.check_disk(tmp_path / "out" / "x", str(model), free_bytes=5999)
    assert warning and "GB free" in warning and str(model) in warning and "checkpoints" in warning
    assert setup.check_disk(tmp_path / "out" / "x", str(model), free_bytes=6000) is None
    assert setup.check_disk(tmp_path, "owner/hub-model") is None  # unknown before it downloads


def test_a_rerun_carries_the_resume_state_over_and_never_writes_through_to_the_finished_run(local):
    """The strategies study's finished runs and a search's study database come along too; the
    database is copied (SQLite writes in place), the rest linked."""
    run = _start(BASE)
    run.resume_from(True)
    _train(run)
    (run.dir / "runs").mkdir()
    record.write_json(run.dir / "runs" / "full.json", {"roc_auc": 0.9})
    (run.dir / "hpo.sqlite3").write_bytes(b"study")
    _record(run, BASE)
    final = run.finish()
    again = _start(BASE)
    assert json.loads((again.dir / "runs" / "full.json").read_text()) == {"roc_auc": 0.9}
    with open(again.dir / "hpo.sqlite3", "ab") as database:
        database.write(b" and more trials")
    record.write_json(again.dir / "runs" / "full.json", {"roc_auc": 0.5})
    assert (final / "hpo.sqlite3").read_bytes() == b"study"
    assert json.loads((final / "runs" / "full.json").read_text()) == {"roc_auc": 0.9}


def test_a_rerun_that_failed_before_training_and_is_run_again_keeps_the_finished_runs_figures(local):
    """Run; rerun with the same parameters, which fails in its set-up after the finished run's
    checkpoints were carried over; run again. That third run continues the failed attempt's
    folder, trains nothing, and its record keeps the finished run's training figures, never
    None (seen when a notebook's set-up cell failed once and was run again)."""
    run = _start(BASE)
    run.resume_from(True)
    _train(run)
    _record(run, BASE)
    run.finish()
    _start(BASE)  # fails here, say: the attempt's folder holds the carried-over checkpoints
    run = _start(BASE)
    run.resume_from(True)
    assert run.trained_nothing
    _record(run, BASE)
    run.finish()
    train = record.read_record(run.final)["train"]
    assert train["resumed_finished"] is True and train["runtime_s"] == 12.5
