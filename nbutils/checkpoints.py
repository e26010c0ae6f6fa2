"""Resuming interrupted training: find the last *complete* checkpoint of a run.

Kaggle sessions end and Colab disconnects; a notebook rerun with the same output folder picks
up where training stopped. The Trainer writes `trainer_state.json` last when it saves a
checkpoint, so a folder without it was cut off mid-save and must not be resumed from. Only the
main process writes it, though: in a run of several processes the others save their RNG state
(`rng_state_<rank>.pth`) without waiting for it, so such a checkpoint is complete only once every
process's RNG file is there too. (A killed two-process FSDP run once resumed from a checkpoint
without `rng_state_1.pth`, and ended on other numbers than the uninterrupted run.)
"""

from __future__ import annotations

import re
from pathlib import Path

from nbutils import runtime

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


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

    Prints what it decided, so an executed notebook shows whether the run resumed.
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
        print(f"THIS RUN ALREADY FINISHED TRAINING: {checkpoints[-1]} is step {finished} of {finished}. "
              f"Nothing is trained again (resume = True keeps the finished run); the cells below "
              f"evaluate and save its best model. To train afresh instead, set resume = False and run again.")
    else:
        print(f"resuming from {checkpoints[-1]} (weights, optimizer, scheduler and RNG state)")
    return str(checkpoints[-1])


def finished_steps(checkpoint: str | Path) -> int:
    """The step count of a checkpoint that ended its training (its trainer state reached
    `max_steps`), else 0: resuming from it trains nothing."""
    import json

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
