"""The loss the Trainer logs and trains on is the loss of the batch, whatever the number of
processes and accumulated batches (`nbutils.parallel.distributed.match_loss_to_model`).

transformers 5.24 takes every model whose `forward` has `**kwargs` for one that divides its loss
by the step's label count (`num_items_in_batch`): it multiplies the loss by the number of
processes and stops dividing it by the accumulation steps. BERT's and T5's heads return a plain
mean of their own batch: their loss and gradients came out x processes x accumulation steps."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from nbutils.parallel import distributed

ROWS = 8  # one optimizer step: 2 processes x 4 rows, or 1 process x 4 rows x 2 accumulated


def _load(cache, name):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the new classification head's load report
    folder = cache / "tiny-models" / name
    if name == "llama":
        return AutoModelForCausalLM.from_pretrained(folder)
    if name == "t5":
        return AutoModelForSeq2SeqLM.from_pretrained(folder)
    # no dropout, and the same fresh head as in the launched processes: the same network
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _inputs(name):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (4, 12), generator=generator)
    if name == "t5":
        return {"input_ids": ids, "labels": torch.randint(5, 90, (4, 6), generator=generator)}
    if name == "llama":
        return {"input_ids": ids, "labels": ids.clone()}
    return {"input_ids": ids, "labels": torch.tensor([0, 1, 1, 0])}


@pytest.mark.parametrize("name", ["bert", "t5", "llama"])
def test_which_models_divide_their_loss_by_the_trainers_item_count(cache, name):
    """What `loss_divides_by_item_count` says is what the model does: a model that divides by
    `num_items_in_batch` returns another loss when given a count of 1."""
    model = _load(cache, name).eval()
    inputs = _inputs(name)
    with torch.no_grad():
        plain = model(**inputs).loss
        counted = model(**inputs, num_items_in_batch=torch.tensor(1)).loss
    divides = not torch.allclose(plain, counted)
    assert divides == (name == "llama")
    assert distributed.loss_divides_by_item_count(model) == divides


def _dataset(tokenizer_free_rows=ROWS):
    from datasets import Dataset

    generator = torch.Generator().manual_seed(1)
    return Dataset.from_dict({"input_ids": torch.randint(5, 90, (tokenizer_free_rows, 12), generator=generator).tolist(),
                              "labels": [i % 2 for i in range(tokenizer_free_rows)]})


def _batch_loss(model, rows):
    """The mean cross-entropy of `rows` under `model`'s current weights."""
    with torch.no_grad():
        return model(input_ids=torch.tensor(rows["input_ids"]), labels=torch.tensor(rows["labels"])).loss.item()


def test_accumulated_batches_log_the_loss_of_the_step_in_one_process(cache, tmp_path):
    """One process, 2 accumulated batches of 4 rows: the first logged loss is the mean loss of
    the 8 rows (today's Trainer logged, and trained on, twice that)."""
    from transformers import Trainer, TrainingArguments

    model = _load(cache, "bert")
    rows = _dataset()
    expected = _batch_loss(model.eval(), rows)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             max_steps=1, logging_steps=1, learning_rate=1e-3, report_to="none",
                             save_strategy="no", use_cpu=True)
    trainer = distributed.apply(Trainer(model=model, args=args, train_dataset=rows))
    trainer.train()
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert logged == pytest.approx(expected, rel=1e-4)


# Run by both processes (torchrun): one optimizer step on the 8 rows, 4 per process, then an
# evaluation of the same rows; the main process writes what was logged.
TWO_PROCESS_SCRIPT = """
import json, sys
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments
from nbutils.parallel import distributed

folder, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)  # the fresh head the test computes the expected loss with
model = AutoModelForSequenceClassification.from_pretrained(
    folder, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
rows = Dataset.from_dict(json.loads(sys.argv[3]))
args = TrainingArguments(output_dir=out + "/checkpoints", per_device_train_batch_size=4, per_device_eval_batch_size=4,
                         max_steps=1, logging_steps=1, learning_rate=0.0, report_to="none", save_strategy="no",
                         use_cpu=True)
trainer = distributed.apply(Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows))
trainer.train()
evaluation = trainer.evaluate()
if trainer.is_world_process_zero():
    loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    json.dump({"loss": loss, "eval_loss": evaluation["eval_loss"], "processes": args.world_size},
              open(out + "/logged.json", "w"))
"""


@pytest.mark.slow
def test_two_processes_log_the_loss_one_process_computes_for_the_same_rows(cache, tmp_path):
    """Two processes over gloo, 4 of the 8 rows each: the logged training loss and the
    evaluation loss are the mean loss of the 8 rows (today's: twice that)."""
    rows = _dataset()
    model = _load(cache, "bert").eval()
    expected = _batch_loss(model, rows)
    script = tmp_path / "two_processes.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", port, str(script), str(cache / "tiny-models" / "bert"), str(tmp_path),
                           json.dumps(rows.to_dict())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logged = json.loads((tmp_path / "logged.json").read_text())
    assert logged["processes"] == 2
    assert logged["loss"] == pytest.approx(expected, rel=1e-4)
    assert logged["eval_loss"] == pytest.approx(expected, rel=1e-4)
