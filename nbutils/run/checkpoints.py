"""Resuming interrupted training: find the last *complete* checkpoint of a run.

Kaggle sessions end and Colab disconnects; a notebook rerun with the same output folder picks
up where training stopped. The Trainer writes `trainer_state.json` last when it saves a
checkpoint, so a folder without it was cut off mid-save and must not be resumed from. Only the
main process writes it, though: in a run of several processes the others save their RNG state
(`rng_state_<rank>.pth`) without waiting for it, so such a checkpoint is complete only once every
process's RNG file is there too. (A killed two-process FSDP run once resumed from a checkpoint
without `rng_state_1.pth`, and ended on other numbers than the uninterrupted run.)

A checkpoint also knows what trained it: `TRAINING_FILE` beside the checkpoints holds the
parameters that decide training and the process layout (`training_identity`). A checkpoint is
resumed only by a run whose identity is the same (`decide`); a run with other values trains
afresh. Continuing with a changed learning rate would keep the old schedule (the scheduler's
state is in the checkpoint) while the record claimed the new one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nbutils.run import runtime

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
TRAINING_FILE = "training.json"  # in the run folder: what its checkpoints were trained with

# Parameters that do not change what training computes, so a checkpoint trained under other
# values of them may be resumed: where the run is written and what it is called, whether to
# resume, how it is reported and published, and settings used only after training (the
# decision threshold, generation for shown examples, merging, the sandbox's worker count).
# Every other parameter decides training, the evaluation-time ones included where evaluation
# picks the best checkpoint. The process layout is compared on its own (`layout`).
NOT_TRAINING = frozenset({
    "project", "profile", "output_dir", "runs_dir", "resume", "report_to", "logging_steps",
    "push_to_hub", "hub_repo_id", "hub_private", "num_processes", "cpu_threads",
    "threshold", "threshold_from_validation", "group_metrics_column", "num_examples_shown",
    "num_generations", "merge_adapter", "save_merged_model", "exec_workers",
})


def layout(config: dict) -> dict:
    """The process layout of this run: processes (all machines) and the strategy that shards
    or copies the model among them ("single" for one process)."""
    processes = runtime.processes()
    strategy = config.get("distributed", "ddp") if processes > 1 else "single"
    return {"processes": processes, "strategy": strategy}


def training_identity(config: dict) -> dict:
    """What a checkpoint of this run is trained with: the parameters that decide training
    (all but `NOT_TRAINING`) and the process layout."""
    parameters = {k: v for k, v in sorted(config.items()) if k not in NOT_TRAINING}
    return {"parameters": json.loads(json.dumps(parameters, default=str)), "layout": layout(config)}


def differences(stored: dict, current: dict) -> list[tuple[str, object, object]]:
    """(name, stored value, current value) for each parameter or layout item that differs;
    a name missing on one side shows as "(unset)"."""
    unset = "(unset)"
    found = []
    for part in ("parameters", "layout"):
        old, new = stored.get(part) or {}, current.get(part) or {}
        for name in sorted(set(old) | set(new)):
            if old.get(name, unset) != new.get(name, unset):
                found.append((name, old.get(name, unset), new.get(name, unset)))
    return found


def describe_differences(found: list[tuple[str, object, object]]) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, old, new in found)


def write_identity(folder: str | Path, identity: dict) -> None:
    from nbutils.run.record import write_json  # atomic, as every file a rerun reads back

    write_json(Path(folder) / TRAINING_FILE, identity)


def read_identity(folder: str | Path) -> dict | None:
    try:
        return json.loads((Path(folder) / TRAINING_FILE).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Decision:
    """What a run does with the checkpoints it finds: "resume" them or train "fresh"; why."""

    action: str
    reason: str


def decide(stored: dict | None, current: dict, has_checkpoints: bool, resume: bool = True) -> Decision:
    """Resume only checkpoints trained with exactly this run's identity (a pure function: the
    property tests vary it). `stored` is the identity written beside the checkpoints (None:
    none written, e.g. a folder from before identities were kept: not resumed)."""
    if not has_checkpoints:
        return Decision("fresh", "no checkpoint")
    if not resume:
        return Decision("fresh", "resume is off")
    if stored is None:
        return Decision("fresh", f"the checkpoints carry no {TRAINING_FILE}: what trained them is unknown")
    found = differences(stored, current)
    if found:
        return Decision("fresh", "the checkpoints were trained with other values: " + describe_differences(found))
    return Decision("resume", "same parameters and process layout")


def complete_checkpoints(folder: str | Path, processes: int | None = None) -> list[Path]:
    """Checkpoint folders with a trainer state, oldest (lowest step) first; with several
    `processes` (default: this run's, `runtime.processes()`), also with each one's RNG state."""
    if processes is None:
        processes = runtime.processes()
    folder = Path(folder)
    if not folder.is_dir():
        return []

    def complete(path: Path) -> bool:
        return (path / STATE_FILE).is_file() and (
            processes <= 1 or all((path / f"rng_state_{rank}.pth").is_file() for rank in range(processes)))

    found = [(int(m[1]), p) for p in folder.iterdir()
             if p.is_dir() and (m := _CHECKPOINT.match(p.name)) and complete(p)]
    return [p for _, p in sorted(found)]


def resume_checkpoint(folder: str | Path, resume: bool = True) -> str | None:
    """The checkpoint to pass to `trainer.train(resume_from_checkpoint=...)`, or None.

    The run folder's identity was checked when the run started (`setup.start`): the
    checkpoints found here were trained with this run's parameters. Prints what it decided,
    so an executed notebook shows whether the run resumed.
    """
    checkpoints = complete_checkpoints(folder)
    if not resume:
        if checkpoints:
            print(f"resume is off: starting afresh, ignoring {len(checkpoints)} checkpoint(s) in {folder}")
        return None
    if not checkpoints:
        print(f"no checkpoint in {folder}: training from the start")
        return None
    finished = finished_steps(checkpoints[-1])
    if finished:
        print(f"NOTHING IS TRAINED: {checkpoints[-1]} is step {finished} of {finished}, trained with these "
              f"same parameters. The cells below evaluate and save its best model; the record keeps the "
              f"training figures of the run that trained it (train.resumed_finished). To train afresh, "
              f"set resume = False.")
    else:
        print(f"resuming from {checkpoints[-1]} (weights, optimizer, scheduler and RNG state)")
    return str(checkpoints[-1])


def finished_steps(checkpoint: str | Path) -> int:
    """The step count of a checkpoint that ended its training (its trainer state reached
    `max_steps`), else 0: resuming from it trains nothing."""
    if checkpoint is None:
        return 0
    try:
        state = json.loads((Path(checkpoint) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return 0
    step, last = state.get("global_step") or 0, state.get("max_steps") or 0
    return step if last and step >= last else 0


def schedule(save_every_steps: int = 0, evaluate: bool = True) -> dict:
    """TrainingArguments kwargs for when checkpoints are saved (the notebooks' `save_every_steps`).

    0 saves at the end of every epoch; n > 0 every n optimizer steps, so that a long epoch on a
    session that may vanish (Kaggle, Colab) loses at most n steps. With `evaluate`, evaluation
    follows the same schedule: `load_best_model_at_end` needs every checkpoint to have a score.
    """
    if not isinstance(save_every_steps, int) or isinstance(save_every_steps, bool) or save_every_steps < 0:
        raise ValueError(f"save_every_steps must be a whole number of optimizer steps >= 0 "
                         f"(0: every epoch), got {save_every_steps!r}")
    when = {"save_strategy": "steps", "save_steps": save_every_steps} if save_every_steps else {"save_strategy": "epoch"}
    if evaluate:
        when["eval_strategy"] = when["save_strategy"]
        if save_every_steps:
            when["eval_steps"] = save_every_steps
    return when
