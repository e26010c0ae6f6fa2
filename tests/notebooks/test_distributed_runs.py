"""Sharded training (FSDP2) end to end, over gloo on the CPU: two processes, two "machines" on
loopback, a killed and resumed run, summarization (its untuned baseline predicted before training)
and full fine-tuning. Six launches in all (and the session's smoke runs); each asserts several
things.

The one-process side of every comparison is the session's smoke run of the same project
(`smoke_run`); the two-process runs take half its batch per process, so the same examples per
optimizer step. Tolerances, and why:
- Detection: each process computes the loss of its half of the batch and the gradients are
  averaged, so the same sums are added in another order; on a tiny random model trained at a
  high rate such differences grow. The DDP test of this recipe allows 0.1 of ROC AUC; the same
  bound here (measured: one process 0.9932, FSDP over two 0.9873).
- Instruction tuning: besides the order of sums, packed rows are split between the processes
  (11 optimizer steps per epoch instead of 12) and each process averages the loss over its own
  answer tokens. Held-out loss within 10% of the one-process run's, having learned at least 3/4
  of its drop from the untrained loss (measured: 5.20 against 4.88, from 7.14; DDP over two
  processes, the same setting: 4.74; see below).
- Resuming: the same processes, ranks and batches as the uninterrupted run: equal to 1e-6.

Open: on the QLoRA recipe FSDP and DDP at the same two processes differ more than the other
comparisons (held-out loss 5.20 against 4.74; FSDP's gradient norm jumps to 21 and 40 at steps
10 and 20, DDP's stays near 1); on the plain-LoRA and detection recipes they agree within about
1%. Not explained yet; the bound above still fails a run that does not learn. Ruled out: the
4-bit storage dtype (uint8 for DDP, fp32 for FSDP: the same logits, bit for bit), the sharded
checkpoints (no saves: the same 5.20), gloo's averaging reduce-scatter (averages), the 4-bit
weights alone (plain LoRA under FSDP also spikes, 6.9 at step 15; held-out 4.92); the loss
scaled by the number of processes (TRL's SFTTrainer divides by the token count of all processes,
as the Trainer assumes: held-out 5.2021 before and after `distributed.match_loss_to_model`); the
best-checkpoint race (this recipe loads no best checkpoint).
"""

import json
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, flat, kill_run
from nbutils.run import checkpoints, record
from tools import runner

pytestmark = pytest.mark.slow

DETECT = "detect_ai_text/bert"
# Per process half the smoke profile's 16 essays: the two processes take the one-process run's
# batches, and as many optimizer steps.
FSDP = {"distributed": "fsdp", "batch_size": 8}
SFT_TOLERANCE = 0.10


def _project(name):
    return runner.select(runner.discover(ROOT, "smoke"), [name])[0]


def _runner_command(name, outputs, *options):
    return [sys.executable, "-m", "tools.runner", "run", name, "--profile", "smoke", "--root", str(ROOT),
            "--outputs", str(outputs), *[f"-p{k}={v}" for k, v in FSDP.items()], *options]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_sharded_in_halves(section, model=None):
    """Each of the two processes holds about half of every parameter. With the plain model:
    half of its parameter bytes, plus the buffers, which FSDP leaves whole in every process
    (BERT's position and token-type ids)."""
    assert section["strategy"] == "fsdp" and section["processes"] == 2
    assert len(section["per_process"]) == 2
    for state in section["per_process"]:
        assert state["sharded_parameters"] == state["parameters"] > 0, "a parameter was left whole"
        # FSDP2 splits each parameter along its first dimension: halves, or one row apart
        assert 0.45 <= state["shard_fraction_min"] <= state["shard_fraction_max"] <= 0.55
    if model is not None:
        parameters = sum(p.numel() * p.element_size() for p in model.parameters())
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        for held in section["model_state_bytes_per_process"]:
            assert held - buffers == pytest.approx(parameters / 2, rel=0.01)


@pytest.fixture(scope="module")
def two_machine_detection(cache, tmp_path_factory):
    """detect_ai_text/bert sharded over two "machines" on loopback: two runner launches, one
    process each, `--nnodes 2`, rendezvous on 127.0.0.1 (what two VMs would each run)."""
    outputs = tmp_path_factory.mktemp("two-machines")
    port = str(_free_port())
    machines = ["--nproc", "1", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    launches = [subprocess.Popen(_runner_command(DETECT, outputs, *machines, "--node-rank", str(rank)),
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in launches]
    for rank, (p, log) in enumerate(zip(launches, logs)):
        assert p.returncode == 0, f"node {rank}:\n{log[-3000:]}"
    return outputs / "smoke" / DETECT


def test_two_machines_shard_the_detector_and_match_the_one_process_run(two_machine_detection, smoke_run):
    run_dir = two_machine_detection
    rec = record.read_record(run_dir)
    single = record.read_record(smoke_run("detect_ai_text")[1] / DETECT)
    section = rec["train"]["distributed"]
    assert section["machines"] == 2 and rec["train"]["processes"] == 2
    # The main machine's log in the run folder it published; the other's beside it (no clash).
    assert (run_dir / "launch.log").is_file() and run_dir.with_name("bert.launch-node1.log").is_file()
    # The record counts the unsharded model's parameters: together the two halves hold them.
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")  # no FSDP needed
    assert sum(p.numel() for p in model.parameters()) == rec["parameters"]["total"]
    _assert_sharded_in_halves(section, model)
    # Checkpoints during training were sharded: one file per process, no consolidated weights.
    last = checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1]
    assert (last / "pytorch_model_fsdp_0").is_dir() and not (last / "model.safetensors").exists()
    # The final model is the consolidated one: it scores the test split as the run did.
    assert rec["data"] == single["data"]
    assert abs(rec["metrics"]["roc_auc"] - single["metrics"]["roc_auc"]) < 0.1
    assert rec["metrics"]["roc_auc"] >= 0.85


# In the group of the two-machine test (a reader of the detection smoke run), so that one worker
# runs both and builds their module fixture once; in a group of its own it was built twice.
@pytest.mark.xdist_group("smoke-detect_ai_text")
def test_killed_fsdp_run_resumes_from_its_sharded_checkpoint_to_the_same_metrics(
        two_machine_detection, tmp_path):
    """Two processes on one machine (`--nproc 2`), killed once a sharded checkpoint is complete,
    rerun: the same final numbers as the uninterrupted two-process run (the two-machine one:
    the same ranks, the same split of every batch)."""
    reference = record.read_record(two_machine_detection)
    run_dir = tmp_path / "smoke" / DETECT  # where a finished run is published
    work = run_dir.with_name(run_dir.name + ".incomplete")  # where the run works until then
    process = subprocess.Popen(_runner_command(DETECT, tmp_path, "--nproc", "2"), cwd=ROOT,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not checkpoints.complete_checkpoints(work / "checkpoints", processes=2):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "5 minutes without a checkpoint"
        time.sleep(0.1)
    kill_run(process)  # the runner, accelerate's launcher and both training processes
    assert not (work / record.RECORD_FILE).exists() and not run_dir.exists(), "killed too late: the run had finished"
    # Complete for both processes: the main one writes trainer_state.json without waiting for the
    # other's RNG state; what the resumed run will take (checkpoints.complete_checkpoints).
    interrupted_at = checkpoints.complete_checkpoints(work / "checkpoints", processes=2)[-1]
    assert (interrupted_at / "pytorch_model_fsdp_0").is_dir()
    state = json.loads((interrupted_at / "trainer_state.json").read_text())
    assert state["global_step"] < state["max_steps"]

    resumed = runner.run_project(_project(DETECT), "smoke", ROOT, tmp_path, FSDP, nproc=2)
    assert resumed.status == "ok", resumed.error
    log = (run_dir / "launch.log").read_text()
    assert "resuming from" in log and f"checkpoints/{interrupted_at.name}" in log
    assert resumed.record["train"]["distributed"]["machines"] == 1
    _assert_sharded_in_halves(resumed.record["train"]["distributed"])
    assert flat(resumed.record["metrics"]) == pytest.approx(flat(reference["metrics"]), abs=1e-6)


def test_fsdp_qlora_instruction_tuning_from_inside_the_notebook(smoke_run):
    """The smoke project instruction_tune/llama2_13b_fsdp_qlora: the tiny Llama with QLoRA,
    `num_processes: 2` and `distributed: fsdp`, so the notebook starts the two processes
    itself (accelerate.notebook_launcher). Compared with llama2_7b's one-process smoke run of
    the same recipe (the same examples per optimizer step)."""
    code, folder = smoke_run("instruction_tune")
    run_dir = folder / "instruction_tune" / "llama2_13b_fsdp_qlora"
    rec = record.read_record(run_dir)
    single = record.read_record(folder / "instruction_tune" / "llama2_7b")
    section = rec["train"]["distributed"]
    assert section["machines"] == 1 and rec["train"]["processes"] == 2
    _assert_sharded_in_halves(section)  # the 4-bit weights too: stored in fp32, sharded
    last = checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1]
    assert (last / "pytorch_model_fsdp_0").is_dir() and (last / "optimizer_0").is_dir()
    assert not (last / "adapter_model.safetensors").exists()

    # The adapter is whole, not one process's shard: every LoRA matrix has the full rank in
    # its sharded (first) dimension. The notebook merged it into the plain base model, loaded
    # without FSDP (nbutils.lora.merge_adapter_and_save).
    from safetensors.torch import load_file

    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    rank = rec["config"]["lora_r"]
    lora_a = [t for n, t in saved.items() if "lora_A" in n]
    assert lora_a and all(t.shape[0] == rank for t in lora_a)
    assert all(t.shape[1] == rank for n, t in saved.items() if "lora_B" in n)
    assert (run_dir / "merged" / "model.safetensors").is_file()

    assert rec["data"]["split_hashes"] == single["data"]["split_hashes"]
    untrained = single["baselines"]["before_training"]["eval_loss"]
    assert rec["baselines"]["before_training"]["eval_loss"] == pytest.approx(untrained, abs=1e-6)
    assert rec["metrics"]["eval_loss"] == pytest.approx(single["metrics"]["eval_loss"], rel=SFT_TOLERANCE)
    # and it learned most of what the one-process run learned
    gained = untrained - rec["metrics"]["eval_loss"]
    assert gained >= 0.75 * (untrained - single["metrics"]["eval_loss"])


SUMMARIZE = "summarize_dialogues/flan_t5_large"


def test_fsdp_summarization_scores_the_untuned_model_before_training(smoke_run, tmp_path):
    """The summarization notebook scores the untuned model with `trainer.predict()` before it
    trains; FSDP2 prepares the model only with its optimizer, so the notebook shards both first
    (`distributed.prepare_for_evaluation`). T5's embedding, held by the encoder, the decoder and
    the tiny model's tied output layer, stays whole in both processes (FSDP2 shards a tensor
    in one unit only); every other parameter is split in halves. Compared with the session's
    one-process run of the same project (the same examples per optimizer step)."""
    run = runner.run_project(_project(SUMMARIZE), "smoke", ROOT, tmp_path, FSDP, nproc=2)
    assert run.status == "ok", run.error
    rec = run.record
    single_dir = smoke_run("summarize_dialogues")[1] / SUMMARIZE
    single = record.read_record(single_dir)
    section = rec["train"]["distributed"]
    assert section["strategy"] == "fsdp" and section["processes"] == 2
    for state in section["per_process"]:
        assert state["parameters"] - state["sharded_parameters"] == 1  # the shared embedding
        assert 0.45 <= state["shard_fraction_min"] <= state["shard_fraction_max"] <= 0.55
    last = checkpoints.complete_checkpoints(tmp_path / "smoke" / SUMMARIZE / "checkpoints")[-1]
    assert (last / "pytorch_model_fsdp_0").is_dir()
    # The untuned model: scored on the same test rows, the same model (a fresh adapter changes
    # nothing), by two processes instead of one.
    assert rec["data"]["split_hashes"] == single["data"]["split_hashes"]
    assert rec["data"]["test"] == single["data"]["test"]
    # The same summaries (generation is exact); the loss is a mean of batch means, and the
    # batches differ (measured: 20.953 against 20.934).
    untuned, single_untuned = rec["baselines"]["untuned"], single["baselines"]["untuned"]
    for key in ("rougeLsum", "rouge1", "gen_len_mean", "cut_at_limit"):
        assert untuned[key] == pytest.approx(single_untuned[key], abs=1e-9), key
    assert untuned["loss"] == pytest.approx(single_untuned["loss"], rel=0.01)
    # Training: the validation loss at every checkpoint within SFT_TOLERANCE of the one-process
    # run's (measured: 6.40, 4.69, 4.36 against 6.46, 4.79, 4.38). Not the test ROUGE: the tiny
    # random model's ROUGE is noise (the one-process run's validation ROUGE-Lsum goes 0.05,
    # 0.002, 0.095), so the checkpoint chosen by it, and the test scores, differ between runs.
    curves = [_validation_losses(folder) for folder in (tmp_path / "smoke" / SUMMARIZE, single_dir)]
    assert len(curves[0]) == len(curves[1]) == 3
    for fsdp_loss, single_loss in zip(*curves):
        assert fsdp_loss == pytest.approx(single_loss, rel=SFT_TOLERANCE)
    assert rec["metrics"]["loss"] < 0.5 * untuned["loss"]  # the test loss too, from the chosen checkpoint


def _validation_losses(run_dir):
    """The validation loss at each evaluation, from the last checkpoint's trainer state."""
    last = checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1]
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return [h["eval_loss"] for h in history if "eval_loss" in h]


FULL = "instruction_tune/qwen2_5_0_5b_instruct"  # plain weights (no 4-bit): full fine-tuning can train them


def test_full_fine_tuning_under_fsdp_saves_a_consolidated_model(tmp_path):
    """`finetuning: full` with FSDP over two processes: no adapter, every weight trains and
    is split in halves; the final save is one whole safetensors model that loads without FSDP."""
    from transformers import AutoModelForCausalLM

    run = runner.run_project(_project(FULL), "smoke", ROOT, tmp_path, {**FSDP, "finetuning": "full"}, nproc=2)
    assert run.status == "ok", run.error
    rec, run_dir = run.record, tmp_path / "smoke" / FULL
    assert rec["config"]["finetuning"] == "full"
    assert rec["parameters"]["trainable"] == rec["parameters"]["total"]  # no frozen base
    assert not (run_dir / "adapter").exists() and not (run_dir / "merged").exists()
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")  # consolidated: no FSDP needed
    assert sum(p.numel() for p in model.parameters()) == rec["parameters"]["total"]
    _assert_sharded_in_halves(rec["train"]["distributed"], model)
    last = checkpoints.complete_checkpoints(run_dir / "checkpoints")[-1]
    assert (last / "pytorch_model_fsdp_0").is_dir() and (last / "optimizer_0").is_dir()
    # it learned: the held-out loss well below the untrained model's
    assert rec["metrics"]["eval_loss"] < rec["baselines"]["before_training"]["eval_loss"] - 1.0
    # what was saved is the trained model, every block of it, not the base model
    base = AutoModelForCausalLM.from_pretrained(ROOT / ".cache" / "tiny-models" / "qwen2")
    trained = dict(model.named_parameters())
    for name, weight in base.named_parameters():
        if "layers." in name and weight.dim() == 2:
            assert trained[name].shape == weight.shape and not torch.equal(trained[name], weight), name
