"""The best checkpoint of a sharded (FSDP) run is the one every process records, keeps and
loads at the end (`nbutils.parallel.distributed.checkpoint_folder_first`).

transformers records the best checkpoint only if its folder exists after the barrier that follows
`save_model`, and under FSDP with sharded checkpoints `save_model` writes nothing: each process
raced the others' first optimizer write. Processes then disagreed on the best checkpoint: the
main one rotated away the checkpoint another loaded at the end (`metadata is None`), one loaded
the best model (a collective) while the other went on (a hang), or all loaded an older one."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # launches two processes

# Both processes: tiny BERT, FSDP over gloo, a checkpoint and an evaluation every step, the best
# by evaluation loss loaded at the end, two checkpoints kept. After every save each process notes
# which checkpoint it holds for the best; at the end, what it loaded.
SCRIPT = """
import json, os, sys
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
from nbutils.parallel import distributed
from nbutils.run import runtime

folder, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
generator = torch.Generator().manual_seed(1)
rows = Dataset.from_dict({"input_ids": torch.randint(5, 90, (16, 12), generator=generator).tolist(),
                          "labels": [i % 2 for i in range(16)]})
noted = []


class Note(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        noted.append([state.global_step, state.best_global_step, state.best_model_checkpoint])


args = TrainingArguments(output_dir=out + "/checkpoints", per_device_train_batch_size=4, per_device_eval_batch_size=8,
                         max_steps=6, learning_rate=5e-3, eval_strategy="steps", eval_steps=1, save_strategy="steps",
                         save_steps=1, save_total_limit=2, load_best_model_at_end=True,
                         metric_for_best_model="eval_loss", greater_is_better=False, report_to="none", use_cpu=True,
                         **distributed.training_arguments("fsdp", model))
trainer = distributed.apply(Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows,
                                    callbacks=[Note()]))
assert trainer.is_fsdp_enabled
trainer.train()
rank = runtime.topology().rank
json.dump({"noted": noted, "best": trainer.state.best_model_checkpoint, "best_step": trainer.state.best_global_step,
           "left": sorted(os.listdir(out + "/checkpoints"))}, open(f"{out}/rank{rank}.json", "w"))
"""


def test_every_process_keeps_and_loads_the_best_checkpoint(cache, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                           str(script), str(cache / "tiny-models" / "bert"), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["noted"] == ranks[1]["noted"], "the processes disagreed on the best checkpoint"
    for step, best_step, best in ranks[0]["noted"]:  # after every save: the best by score
        assert best is not None and best.endswith(f"checkpoint-{best_step}"), (step, best_step, best)
    best = ranks[0]["best"]
    assert best.endswith(f"checkpoint-{ranks[0]['best_step']}")
    assert os.path.basename(best) in ranks[0]["left"], "the best checkpoint was rotated away"
