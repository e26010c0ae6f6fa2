"""`make gpu-check` (issue 28): every full recipe at real width on a GPU. No GPU here: its tiny
mode runs the same code at tiny width on the CPU, so the command cannot rot while no GPU is
lent; the rows' settings come from the full parameter files, the architectures from the
configurations written down in the tool, checked here against published parameter counts."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from conftest import ROOT
from tools import gpu_check, runner

# Published parameter counts: the Llama 2 paper's 7B and 13B (exact counts of the released
# checkpoints), the model cards of Qwen2.5-0.5B-Instruct (0.49B) and DeBERTa-v3-base (86M backbone
# + 98M embeddings), and the counts of the original BERT-base, RoBERTa-base, DistilBERT, T5-base
# and FLAN-T5 checkpoints as transformers loads them.
PUBLISHED = {
    "NousResearch/Llama-2-7b-hf": 6_738_415_616,
    "NousResearch/Llama-2-13b-hf": 13_015_864_320,
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768,
    "google/flan-t5-base": 247_577_856,
    "google/flan-t5-large": 783_150_080,
    "google-t5/t5-base": 222_903_552,
    "google-bert/bert-base-uncased": 109_482_240,
    "FacebookAI/roberta-base": 124_645_632,
    "distilbert/distilbert-base-uncased": 66_362_880,
    "microsoft/deberta-v3-base": 184_000_000,  # "86M backbone ... 98M parameters in the Embedding layer"
}

# What a lent GPU machine does not have (it has the training stack only): the check must not
# import any of these.
NOT_ON_THE_GPU_MACHINE = ("papermill", "nbformat", "nbconvert", "IPython", "sklearn", "matplotlib", "optuna",
                          "rouge_score", "evaluate", "scipy")


@pytest.mark.parametrize("name", sorted(gpu_check.MODELS))
def test_each_written_down_configuration_gives_the_published_parameter_count(name):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    values = gpu_check.MODELS[name]
    auto = {"llama": AutoModelForCausalLM, "qwen2": AutoModelForCausalLM, "t5": AutoModelForSeq2SeqLM}.get(
        values["model_type"], AutoModel)
    with torch.device("meta"):
        model = auto.from_config(gpu_check.model_config(name, "base"))
    count = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if values["model_type"] == "t5" and values["tie_word_embeddings"] is False:
        # FLAN-T5's checkpoints hold an output layer of their own; transformers 5 ties it to the
        # embeddings whatever the config says (T5Config forces tie_word_embeddings).
        assert model.lm_head.weight is model.shared.weight
        count += values["vocab_size"] * values["d_model"]
    assert count == pytest.approx(PUBLISHED[name], rel=0.005 if "deberta" in name else 0)


def test_every_full_project_has_a_row_with_the_recipes_settings():
    specs = {s.project: s for s in gpu_check.recipe_specs(ROOT)}
    assert set(specs) == {p.name for p in runner.discover(ROOT, "full")}
    thirteen = specs["instruction_tune/llama2_13b_qlora"]
    assert (thirteen.model_name, thirteen.load_in_4bit, thirteen.lora["r"], thirteen.lora["targets"]) == (
        "NousResearch/Llama-2-13b-hf", True, 64, ["all-linear"])
    assert thirteen.processes == 1 and thirteen.optim == "paged_adamw_32bit" and thirteen.checkpointing
    assert (thirteen.length, thirteen.profile) == (1024, "guanaco")
    fsdp = specs["instruction_tune/llama2_13b_fsdp_qlora"]
    assert (fsdp.processes, fsdp.distributed, fsdp.precision) == (2, "fsdp", "bf16")
    assert specs["detect_ai_text/roberta_search"].batch_size == 32  # the search's largest batch
    assert specs["detect_ensemble"].no_training
    # Summarization lengths by the notebook's own rule (its 99th percentile, rounded up to 8).
    flan = specs["summarize_dialogues/flan_t5_large"]
    assert flan.length % 8 == 0 and flan.target_length % 8 == 0 and 200 < flan.length <= 1024 > flan.target_length
    # The biggest models come first: they matter most if the time budget runs out.
    assert list(specs)[:2] == ["instruction_tune/llama2_13b_fsdp_qlora", "instruction_tune/llama2_13b_qlora"]


def test_rows_that_cannot_run_here_say_why(monkeypatch):
    specs = {s.project: s for s in gpu_check.recipe_specs(ROOT)}
    fsdp, seven = specs["instruction_tune/llama2_13b_fsdp_qlora"], specs["instruction_tune/llama2_7b"]
    assert gpu_check.skip_reason(fsdp, 1, 0, 450) == "needs 2 GPUs, this machine has 1"
    assert gpu_check.skip_reason(fsdp, None, 0, 0) == ""  # tiny, on a CPU: two gloo processes
    assert gpu_check.skip_reason(seven, 1, 460, 450) == "not started: 460 s of the 450 s budget spent"
    real = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec",
                        lambda name: None if name in ("bitsandbytes", "trl") else real(name))
    assert gpu_check.skip_reason(seven, 1, 0, 450) == "needs bitsandbytes, trl (not installed)"
    assert "trains no model" in gpu_check.skip_reason(specs["detect_ensemble"], 1, 0, 450)


def test_like_t4_trains_in_what_auto_picks_on_a_t4():
    specs = {s.project: s for s in gpu_check.recipe_specs(ROOT)}
    assert gpu_check.like_t4(specs["instruction_tune/llama2_13b_qlora"]).precision == "fp16"
    assert gpu_check.like_t4(specs["summarize_dialogues/flan_t5_base"]).precision == "fp32"  # T5 overflows fp16
    assert gpu_check.like_t4(specs["instruction_tune/qwen2_5_0_5b_instruct"]).precision == "fp32"
    assert "not a T4 recipe" in gpu_check.like_t4(specs["instruction_tune/llama2_13b_fsdp_qlora"]).no_training
    with pytest.raises(SystemExit):
        gpu_check.parse_arguments(["--tiny", "--like", "t4"])


def test_the_carried_wheels_are_named_and_checked_before_installing(tmp_path):
    names = [w.split("==")[0] for w in gpu_check.GPU_WHEELS]
    assert {"bitsandbytes", "trl", "datasets"} <= set(names)
    (tmp_path / "trl-1.16.0-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(SystemExit, match="no wheel for bitsandbytes, datasets, dill, multiprocess there"):
        gpu_check.install_wheels(tmp_path)


def test_the_estimate_mode_prints_every_row_per_gpu_without_training(capsys):
    assert gpu_check.main(["--estimate", "t4", "--only", "instruction_tune"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("instruction")}
    # The 13B QLoRA recipe fits one T4 as its batching runs (one packed row per forward); with the
    # adapter on every linear layer (250M parameters), the whole batch at once (4 x 1024) does not.
    assert "fp16:" in lines["instruction_tune/llama2_13b_qlora"]
    assert lines["instruction_tune/llama2_13b_qlora"].count("(fits)") == 1
    assert "at 4x1024 (does not fit)" in lines["instruction_tune/llama2_13b_qlora"]
    assert "refused: QLoRA under FSDP needs native bf16" in lines["instruction_tune/llama2_13b_fsdp_qlora"]
    row = gpu_check.estimate_row(next(s for s in gpu_check.recipe_specs(ROOT, ["instruction_tune/llama2_13b_qlora"])),
                                 "t4", rows=1)
    assert row["estimate"]["bytes_per_process"]["peak"] == row["peak"] < 13 * gpu_check.GIB


@pytest.mark.slow  # it launches the two processes of the FSDP row
def test_tiny_mode_runs_every_row_and_measures_it(tmp_path, monkeypatch, capsys):
    for name in NOT_ON_THE_GPU_MACHINE:
        monkeypatch.setitem(sys.modules, name, None)  # importing it now fails
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out

    assert result["tiny"] and result["device"]["kind"] == "cpu"
    assert result["versions"]["torch"] == torch.__version__ and result["versions"]["transformers"]
    assert result["columns"] == ["project", "status", "model", "precision", "shape", "peak RSS rise MiB (CPU, not GPU)",
                                 "estimate MiB", "measured/estimate", "tokens/s", "MFU", "loss finite"]
    header = next(line for line in printed.splitlines() if line.startswith("project "))
    assert [cell.strip() for cell in header.split("|")] == result["columns"]  # the printed table's
    rows = {row["project"]: row for row in result["rows"]}
    assert set(rows) == {p.name for p in runner.discover(ROOT, "full")}
    assert rows["detect_ensemble"]["status"] == "skipped"
    ran = [row for row in result["rows"] if row["status"] in ("ok", "same")]
    assert len(ran) == len(rows) - 1, [(r["project"], r.get("reason")) for r in result["rows"] if r not in ran]
    for row in ran:
        assert row["loss_finite"] and all(math.isfinite(x) for x in row["losses"]), row["project"]
        assert row["peak"]["rss_rise"] > 0 and "not GPU memory" in row["peak"]["measure"], row["project"]
        assert row["estimate"]["bytes_per_process"]["peak"] > 0 and row["measured_over_estimate"] > 0
        assert row["tokens_per_s"] > 0 and row["steps"] == 2
        assert row["project"] in printed
    fsdp = rows["instruction_tune/llama2_13b_fsdp_qlora"]
    assert fsdp["shape"]["processes"] == 2 and len(fsdp["per_process"]) == 2
    assert fsdp["estimate"]["strategy"] == "fsdp" and fsdp["estimate"]["processes"] == 2
    seven = rows["instruction_tune/llama2_7b"]
    assert seven["estimate"]["weights_dtype"] == "4-bit" and seven["model_flops_per_token"] > 0
    assert "packed" in seven["batching"] or "padded" in seven["batching"]  # the notebook's own decision
    assert rows["detect_ai_text/bert_gradual"]["same_as"] == "detect_ai_text/bert"
