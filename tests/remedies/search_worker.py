"""One search process for the shared and resumed search tests (tests/remedies/test_search_storage.py):
`search.run_search` on the tiny BERT through `Trainer.hyperparameter_search`, as the notebook
runs it, with a study in the database given. Prints the search's summary as one JSON line.

    python tests/remedies/search_worker.py CACHE STORAGE STUDY TRIALS [--kill-at-trial K] [--barrier DIR N]

--kill-at-trial K: the process SIGKILLs itself as its (K+1)-th trial starts training (that trial is
RUNNING in the database, as when a machine disappears). --barrier DIR N: the first trial waits
until N processes have started one, so every process of the test surely takes part.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: training_helpers

from transformers import TrainerCallback  # noqa: E402

from nbutils.remedies import search  # noqa: E402
from training_helpers import tiny_classifier, tokenized_essays, training_args  # noqa: E402

SPACE = {"learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "weight_decay": {"low": 0.0, "high": 0.1}}
# A killed worker's trial is stale after the grace period. It must stay well above the longest
# pause a live process's heartbeat thread can suffer on a loaded machine (2 s was too short
# on 2 shared cores: a live trial was failed by the other process).
HEARTBEAT_SECONDS = 1
GRACE_SECONDS = 10


class KillAt(TrainerCallback):
    """SIGKILL this process as its trial number `k` (counting its own from 0) starts training."""

    def __init__(self, k: int):
        self.k, self.started = k, 0

    def on_train_begin(self, args, state, control, **kwargs):
        if self.started == self.k:
            os.kill(os.getpid(), signal.SIGKILL)
        self.started += 1


class Barrier(TrainerCallback):
    """The first trial of each process waits until `parties` processes have started one."""

    def __init__(self, folder: Path, parties: int):
        self.folder, self.parties, self.passed = folder, parties, False

    def on_train_begin(self, args, state, control, **kwargs):
        if self.passed:
            return
        (self.folder / str(os.getpid())).touch()
        deadline = time.time() + 300
        while len(list(self.folder.iterdir())) < self.parties:
            assert time.time() < deadline, "the other search process never started a trial"
            time.sleep(0.1)
        self.passed = True


def make_trainer(cache: Path, output: Path, callbacks=()):
    from transformers import DataCollatorWithPadding, Trainer

    data, tokenizer = tokenized_essays(cache, n=24)
    split = data.train_test_split(test_size=8, seed=0)
    return Trainer(model_init=lambda: tiny_classifier(cache, "bert"),
                   args=training_args(output, num_train_epochs=1, eval_strategy="no"),
                   train_dataset=split["train"], eval_dataset=split["test"],
                   data_collator=DataCollatorWithPadding(tokenizer), callbacks=list(callbacks))


def run(cache, storage, study, trials, output, callbacks=(), poll_seconds=0.2, heartbeat_seconds=HEARTBEAT_SECONDS,
        grace_seconds=GRACE_SECONDS):
    """The search as the tests run it: minimise the validation loss over SPACE."""
    return search.run_search(make_trainer(Path(cache), Path(output), callbacks), SPACE, trials, "loss",
                             "minimize", seed=0, storage=storage, study_name=study,
                             heartbeat_seconds=heartbeat_seconds, grace_seconds=grace_seconds,
                             poll_seconds=poll_seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("storage")
    parser.add_argument("study")
    parser.add_argument("trials", type=int)
    parser.add_argument("--kill-at-trial", type=int)
    parser.add_argument("--barrier", nargs=2)
    parser.add_argument("--output", default=None)
    parser.add_argument("--grace", type=int, default=GRACE_SECONDS)
    options = parser.parse_args()
    callbacks = []
    if options.kill_at_trial is not None:
        callbacks.append(KillAt(options.kill_at_trial))
    if options.barrier:
        callbacks.append(Barrier(Path(options.barrier[0]), int(options.barrier[1])))
    output = options.output or f"/tmp/search-worker-{os.getpid()}"
    best, objective, table, info = run(options.cache, options.storage, options.study, options.trials,
                                       output, callbacks, grace_seconds=options.grace)
    # One write of the whole line: the processes of a DDP run share one stdout pipe, and print's
    # separate writes of the text and its newline interleaved once ('{"best"...}{"best"...}').
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (json.dumps({"best": best, "objective": objective, "info": info}) + "\n").encode())


if __name__ == "__main__":
    main()
