"""`make gpu-check`: would each full recipe run on this GPU, in how much memory, how fast.

For every project of the full profile (`params/<notebook>/full*.yaml`, merged over the notebook's
defaults as a run gets them) it builds the recipe's real architecture from its configuration
(`MODELS`: the named checkpoints' config values, written down, so nothing is downloaded) with
random weights, loads it the way the notebook does (`from_pretrained` with the recipe's dtype,
4-bit quantization and device placement, from a state dict made on the spot), applies the
recipe's own settings (precision as the notebook picks it on this machine, LoRA rank and
targets, 4-bit, activation checkpointing, batch size and accumulation, optimizer, FSDP in
several processes) and trains a few optimizer steps through the notebook's trainer (TRL's
SFTTrainer, Seq2SeqTrainer, Trainer) on synthetic token ids of the recipe's shapes. Lengths are
the longest a batch of the recipe reaches, the peak: `max_length` where the recipe fixes it; for
summarization the notebook's own rule (`length_percentile` of the data's lengths, from the
SAMSum length profile that `tools.bench` quotes); for SFT the notebook's own batching decision
(`nbutils.batching.sft_batching`, packing where the attention keeps examples apart) on lengths
drawn from guanaco-llama2-1k's length profile.

Each row records the peak GPU memory (allocated and reserved, while loading and while
training), the CUDA context outside PyTorch's allocator, the memory estimate the notebook
prints (`nbutils.parallel.memory`, at the shapes run) and the ratio of measured to estimated
peak, tokens/s, model FLOPs utilisation against the device's peak (`DEVICE_PEAKS`; model FLOPs
counted by `torch.utils.flop_counter` over one training step, without the forward pass that
activation checkpointing repeats) and whether the loss stayed finite. It prints one table and
writes a JSON file with the torch, transformers and other library versions it ran on. A row that
cannot run here says why (two GPUs needed, a package missing, the time budget spent, a failure
with its message) and the command goes on.

    python -m tools.gpu_check                        # every full recipe on this machine's GPU(s)
    python -m tools.gpu_check --only instruction_tune/llama2_7b text_to_pandas
    python -m tools.gpu_check --like t4              # ... in the precision a T4 would get (fp16/fp32)
    python -m tools.gpu_check --estimate t4          # the estimate per GPU only: nothing is trained
    python -m tools.gpu_check --tiny                 # the same code at tiny width on a CPU (CI)

`--tiny` keeps every recipe setting that a CPU can run and shrinks the rest: each architecture
to 2 layers of width 64 and a vocabulary of 512, batches to 2 rows of at most 32 tokens, 2
steps, fp32 (the notebooks' "auto" precision on a CPU), torch's AdamW for bitsandbytes' paged
optimizers (GPU only). Memory there is the process's peak resident set (VmHWM after resetting
it), labelled so: it is CPU memory, interpreter and libraries included, not GPU memory.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "outputs/gpu-check/gpu_check.json"
# All single-GPU rows must fit the 10 minutes one command may run on a lent machine: rows not
# started when this much time has gone are reported as not run.
DEFAULT_BUDGET_S = 450

# The named checkpoints' configurations, written down from each checkpoint's config.json on the
# Hugging Face Hub (https://huggingface.co/<name>/blob/main/config.json), since no machine that
# runs this check reaches the hub. `dtype` is the config's torch_dtype (what `from_pretrained`
# loads by default in transformers 5); fields left out take the config class's defaults, which
# are the checkpoint's values too. tests/tools/test_gpu_check.py checks each against the
# parameter count its model card or paper publishes.
MODELS = {
    "NousResearch/Llama-2-7b-hf": dict(  # a copy of meta-llama/Llama-2-7b-hf
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, dtype="float16"),
    "NousResearch/Llama-2-13b-hf": dict(  # a copy of meta-llama/Llama-2-13b-hf
        model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, dtype="float16"),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=151643,
        eos_token_id=151645, dtype="bfloat16"),
    "google/flan-t5-base": dict(
        model_type="t5", d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12,
        vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dtype="float32"),
    "google/flan-t5-large": dict(
        model_type="t5", d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24, num_decoder_layers=24,
        vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dtype="float32"),
    "google-t5/t5-base": dict(
        model_type="t5", d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12,
        vocab_size=32128, feed_forward_proj="relu", tie_word_embeddings=True,
        relative_attention_num_buckets=32, layer_norm_epsilon=1e-6, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1),
    "google-bert/bert-base-uncased": dict(
        model_type="bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
        layer_norm_eps=1e-12, pad_token_id=0),
    "FacebookAI/roberta-base": dict(
        model_type="roberta", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "distilbert/distilbert-base-uncased": dict(
        model_type="distilbert", dim=768, n_layers=6, n_heads=12, hidden_dim=3072, vocab_size=30522,
        max_position_embeddings=512, sinusoidal_pos_embds=False, pad_token_id=0),
    "microsoft/deberta-v3-base": dict(
        model_type="deberta-v2", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, vocab_size=128100, max_position_embeddings=512, relative_attention=True,
        position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
        layer_norm_eps=1e-7, max_relative_positions=-1, position_biased_input=False, type_vocab_size=0,
        pad_token_id=0),
}

# Dense peak FLOP/s by compute dtype (fp32: without tensor cores: torch leaves TF32 off for
# matrix products by default), from NVIDIA's datasheets: H100 SXM and H200 (hopper architecture
# datasheet), H100 PCIe, A100 (A100 datasheet, 312 TFLOP/s bf16/fp16 dense), L4 (L4 datasheet,
# 121 dense), T4 (T4 datasheet, 65 fp16, 8.1 fp32; no bf16). Matched by `torch.cuda.
# get_device_name` in this order; an unknown GPU gets no MFU (its row says so).
DEVICE_PEAKS = [
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51.2e12}),
    ("H100", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12}),  # SXM (HBM3) and NVL
    ("H200", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
]

TINY = {"hidden_size": 64, "d_model": 64, "dim": 64, "intermediate_size": 128, "d_ff": 128, "hidden_dim": 128,
        "num_hidden_layers": 2, "num_layers": 2, "num_decoder_layers": 2, "n_layers": 2,
        "num_attention_heads": 4, "num_heads": 4, "n_heads": 4, "d_kv": 16, "vocab_size": 512}
TINY_LENGTH, TINY_TARGET, TINY_BATCH, TINY_STEPS = 32, 16, 2, 2
GIB, MIB = 2 ** 30, 2 ** 20
# Samples of the real data's lengths that the shapes are drawn from (tools.bench's profiles).
SAMSUM_TRAIN_ROWS, GUANACO_ROWS = 14732, 1000


@dataclass
class Spec:
    """One row: a full project's training, as its notebook would run it."""

    project: str
    model_name: str = ""
    task: str = ""  # causal_lm, seq2seq_lm or sequence_classification
    trainer: str = ""  # sft, seq2seq or classification
    lora: dict | None = None  # r, alpha, dropout, targets, modules_to_save
    load_in_4bit: bool = False
    quant_type: str = "nf4"
    double_quant: bool = True
    precision: str = "auto"
    weights: str = "checkpoint"  # the load dtype: the checkpoint's own, or the compute dtype
    optim: str | None = None  # None: the Trainer's default (the notebook sets none)
    batch_size: int = 1
    accumulation: int = 1
    length: int = 0  # tokens per row (the input's, for seq2seq)
    target_length: int = 0  # seq2seq
    profile: str = ""  # SFT: the data's length profile the examples are drawn from
    checkpointing: bool = False
    distributed: str = "ddp"
    processes: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    no_training: str = ""  # why the project trains no model of its own
    notes: list = field(default_factory=list)

    def signature(self, tiny: bool = False) -> tuple:
        """What decides memory and speed: rows equal in it are measured once. The model counts
        by its configuration (at tiny width 7B and 13B Llama are one model)."""
        skip = {"project", "notes", "learning_rate", "weight_decay", "max_grad_norm", "model_name"}
        model = model_config(self.model_name, self.task, tiny).to_json_string() if self.model_name else ""
        return (model, *((k, json.dumps(v, sort_keys=True)) for k, v in dataclasses.asdict(self).items()
                         if k not in skip))


# ----------------------------------------------------------------------------------------------
# The recipes: a full project's parameters -> the row's settings, per notebook


def _lora(params: dict, key_targets: str = "lora_target_modules") -> dict:
    return {"r": params["lora_r"], "alpha": params["lora_alpha"], "dropout": params["lora_dropout"],
            "targets": list(params[key_targets]), "modules_to_save": list(params.get("lora_modules_to_save") or [])}


def _common(spec: Spec, params: dict) -> Spec:
    spec.precision = params.get("precision", "auto")
    spec.accumulation = params.get("gradient_accumulation_steps", 1)
    spec.distributed = params.get("distributed", "ddp")
    spec.processes = params.get("num_processes", 1)
    spec.learning_rate = params.get("learning_rate", spec.learning_rate)
    spec.weight_decay = params.get("weight_decay", 0.0)
    spec.max_grad_norm = params.get("max_grad_norm", 1.0)
    return spec


def spec_instruction(project: str, params: dict) -> Spec:
    full = params["finetuning"] == "full"
    spec = _common(Spec(project, params["model_name"], "causal_lm", "sft", None if full else _lora(params),
                        params["load_in_4bit"], params["bnb_4bit_quant_type"], params["bnb_4bit_use_double_quant"],
                        weights="compute", optim=params["optim"], batch_size=params["batch_size"],
                        length=params["max_length"], checkpointing=params["activation_checkpointing"]), params)
    guanaco = "guanaco" in params["data_source"] and params["data_format"] in ("auto", "text")
    spec.profile = "guanaco" if guanaco else ""
    spec.notes.append("packed rows of up to max_length tokens, as the notebook's batching decides" +
                      ("; example lengths from guanaco-llama2-1k's profile" if guanaco else
                       "; no length profile of this data: rows per step as for unpacked examples"))
    return spec


def spec_detection(project: str, params: dict) -> Spec:
    batch = params["batch_size"]
    if params.get("hpo_trials"):  # the search's largest batch is the peak
        choices = params["hpo_space"].get("batch_size", [batch])
        batch = max(choices) if isinstance(choices, list) else batch
    spec = _common(Spec(project, params["model_name"], "sequence_classification", "classification",
                        batch_size=batch, length=params["max_length"]), params)
    spec.notes.append("every weight trains (its layer groups end unfrozen), batches of max_length "
                      "(DAIGT essays reach it)" + ("; the search's largest batch" if params.get("hpo_trials") else ""))
    return spec


def spec_strategies(project: str, params: dict) -> Spec:
    spec = _common(Spec(project, params["model_name"], "sequence_classification", "classification",
                        batch_size=params["batch_size"], length=params["max_length"]), params)
    spec.notes.append("the heaviest strategy: full fine-tuning at max_length")
    return spec


def samsum_lengths(percentile: float, cap: int) -> tuple[int, int, str]:
    """The summarization notebook's picked lengths (its own rule) on lengths drawn from SAMSum's
    profile: the dialogue (plus the prompt's words) and the summary."""
    from nbutils.tasks import summarization
    from tools import bench

    rng = np.random.default_rng(0)
    dialogues, summaries = bench.summarization_lengths(SAMSUM_TRAIN_ROWS, rng)
    prompt_tokens = 12  # "Summarize the following conversation." ... "Summary:"
    source = summarization.choose_max_length(dialogues + prompt_tokens, percentile, cap)
    target = summarization.choose_max_length(summaries, percentile, cap)
    return source, target, (f"lengths: the {percentile:g}th percentile of SAMSum-like dialogues and summaries "
                            "(tools.bench's profile, capped there at 512/128), as the notebook picks them")


def spec_summarization(project: str, params: dict) -> Spec:
    source, target = params["max_source_length"], params["max_target_length"]
    note = "lengths: the recipe's"
    if not (source and target):
        picked_source, picked_target, note = samsum_lengths(params["length_percentile"], params["max_length_cap"])
        source, target = source or picked_source, target or picked_target
    spec = _common(Spec(project, params["model_name"], "seq2seq_lm", "seq2seq", _lora(params),
                        params["load_in_4bit"], batch_size=params["batch_size"], length=source,
                        target_length=target), params)
    spec.notes.append(note)
    return spec


# text_to_pandas keeps the longest training answer whole (max_target_length 0). Its answers are
# one line of pandas code: 128 tokens is assumed for the longest, not measured on the real data.
TEXT2PANDAS_LONGEST_ANSWER = 128


def spec_text_to_pandas(project: str, params: dict) -> Spec:
    target = params["max_target_length"] or TEXT2PANDAS_LONGEST_ANSWER
    spec = _common(Spec(project, params["model_name"], "seq2seq_lm", "seq2seq",
                        batch_size=params["batch_size"], length=params["max_source_length"],
                        target_length=target), params)
    spec.notes.append("every weight trains; " + ("target length: the recipe's" if params["max_target_length"]
                                                  else f"longest answer assumed {target} tokens"))
    return spec


def spec_ensemble(project: str, params: dict) -> Spec:
    return Spec(project, no_training="trains no model: it stacks the detection runs' scores (scikit-learn)")


SPECS = {"instruction_tune": spec_instruction, "detect_ai_text": spec_detection,
         "finetuning_strategies": spec_strategies, "summarize_dialogues": spec_summarization,
         "text_to_pandas": spec_text_to_pandas, "detect_ensemble": spec_ensemble}


def recipe_specs(root: Path = ROOT, only: list[str] | None = None) -> list[Spec]:
    """One Spec per full project (or those `only` names: projects or notebooks), the largest
    models first (the rows that matter most run before any time budget is spent)."""
    from tools import runner

    projects = runner.discover(root, "full")
    if only:
        projects = runner.select(projects, only)
    specs = []
    for project in projects:
        notebook = project.name.split("/")[0]
        if notebook not in SPECS:
            raise SystemExit(f"gpu-check: no row recipe for notebook {notebook!r} ({project.name}): add one to "
                             "tools/gpu_check.py SPECS")
        spec = SPECS[notebook](project.name, runner.recipe_parameters(project, "full"))
        if spec.model_name and spec.model_name not in MODELS:
            raise SystemExit(f"gpu-check: {project.name} trains {spec.model_name}, whose configuration is not "
                             "written down in tools/gpu_check.py MODELS")
        specs.append(spec)
    return sorted(specs, key=lambda s: -parameter_estimate(s.model_name))


def parameter_estimate(name: str) -> float:
    """A rough size for ordering the rows: layers x width^2 (no model is built)."""
    values = MODELS.get(name, {})
    width = values.get("hidden_size") or values.get("d_model") or values.get("dim") or 0
    layers = values.get("num_hidden_layers") or values.get("n_layers") or 2 * values.get("num_layers", 0)
    return width * width * layers


def tiny_spec(spec: Spec) -> Spec:
    """The same row at CPU scale (see the module docstring): what changes is noted."""
    tiny = dataclasses.replace(spec, notes=list(spec.notes))
    tiny.batch_size, tiny.accumulation = min(spec.batch_size, TINY_BATCH), 1
    tiny.length, tiny.target_length = min(spec.length, TINY_LENGTH), min(spec.target_length, TINY_TARGET)
    tiny.precision = "auto"
    if spec.optim and ("paged" in spec.optim or "8bit" in spec.optim):
        tiny.optim = "adamw_torch"
    tiny.notes.append(f"tiny: width 64, 2 layers, batch <= {TINY_BATCH} x <= {TINY_LENGTH} tokens, fp32"
                      + (f", adamw_torch for {spec.optim}" if tiny.optim != spec.optim else ""))
    return tiny


# ----------------------------------------------------------------------------------------------
# Models: a configuration, random weights, loaded as the notebook loads


def model_config(name: str, task: str, tiny: bool = False):
    """The checkpoint's configuration from `MODELS` (tiny: shrunk to width 64, 2 layers)."""
    from transformers import AutoConfig

    values = dict(MODELS[name])
    if task == "sequence_classification":
        values["num_labels"] = 2
    if tiny:
        heads = values.get("num_attention_heads")
        for key, small in TINY.items():
            if key in values:
                values[key] = small
        if "num_key_value_heads" in values:  # keep grouped-query attention's ratio
            values["num_key_value_heads"] = max(1, TINY["num_attention_heads"] * values["num_key_value_heads"] // heads)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            if isinstance(values.get(key), int) and values[key] >= TINY["vocab_size"]:
                values[key] = {"bos_token_id": 2, "eos_token_id": 1}.get(key, 0)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)


def random_state_dict(config, task: str, dtype, device: str) -> dict:
    """Random weights in the checkpoint's dtype, on the CPU as a checkpoint arrives: normal with
    the config's initializer_range (0.02 where it has none) for matrices, ones for norms, zeros
    for biases; made on `device` (fast on a GPU), one tensor at a time."""
    import torch

    from nbutils.parallel import memory

    std = getattr(config, "initializer_range", 0.02)
    torch.manual_seed(0)  # every process of a row loads the same checkpoint, as from a file
    state = {}
    for name, param in memory.meta_model(config, task).named_parameters():
        tensor = torch.empty(param.shape, dtype=dtype, device=device)
        if name.endswith("bias"):
            tensor.zero_()
        elif param.dim() < 2:
            tensor.fill_(1.0)
        else:
            tensor.normal_(0.0, std)
        state[name] = tensor.to("cpu")
    return state


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


# ----------------------------------------------------------------------------------------------
# Measuring


class Memory:
    """Peak memory of this process since the last `reset`: CUDA's allocator on a GPU; on a CPU
    the resident set's high-water mark (VmHWM), reset through /proc/self/clear_refs. A CPU row's
    peak includes what the libraries allocate the first time they run; the libraries a row may
    import are imported before the first row (`check`)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.baseline = 0
        self.resettable = True

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(f"/proc/self/status has no {field}")

    def reset(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            # Memory freed by earlier rows goes back to the system first (glibc keeps it otherwise,
            # and this row would reuse it without its resident set rising).
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux 4.0+: VmHWM = VmRSS from here on
            self.baseline = self._status("VmRSS")
        except OSError:
            self.resettable = False

    def peak(self) -> dict:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()}
        try:
            return {"rss_rise": self._status("VmHWM") - self.baseline, "resettable": self.resettable}
        except OSError:
            return {}


def cuda_context_bytes() -> int:
    """The GPU memory in use outside PyTorch's allocator once CUDA and cuBLAS are up."""
    import torch

    torch.ones(64, 64, device="cuda") @ torch.ones(64, 64, device="cuda")  # cuBLAS up
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


def device_peak_flops(dtype: str) -> tuple[float | None, str]:
    import torch

    if not torch.cuda.is_available():
        return None, "no peak FLOP/s known for a CPU"
    name = torch.cuda.get_device_name(0)
    for key, peaks in DEVICE_PEAKS:
        if key in name:
            return (peaks.get(dtype), "" if dtype in peaks else f"{name} has no {dtype} peak")
    return None, f"no peak FLOP/s written down for {name}"


def step_clock(cuda: bool):
    """A callback timing each optimizer step (synchronised with the GPU)."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds = []

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.start)

    return StepClock()


def model_flops(trainer, checkpointing: bool) -> tuple[float, int]:
    """(model FLOPs, tokens) of one training step on one batch of the trainer's own data:
    forward and backward counted by torch's FlopCounterMode, less the forward that activation
    checkpointing repeats (counted once more without gradients)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    tokens = sum(int(batch[key].numel()) for key in ("input_ids", "labels")
                 if key in batch and (key == "input_ids" or trainer.model.config.is_encoder_decoder))
    with trainer.autocast_smart_context_manager(), FlopCounterMode(display=False) as counter:
        trainer.compute_loss(model, batch).backward()
    total = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    if checkpointing:
        with torch.no_grad(), trainer.autocast_smart_context_manager(), FlopCounterMode(display=False) as forward:
            trainer.compute_loss(model, batch)
        total -= forward.get_total_flops()
    return float(total), tokens


# ----------------------------------------------------------------------------------------------
# One row


def missing_packages(spec: Spec) -> list[str]:
    needed = {"transformers", "accelerate"}
    if spec.lora:
        needed.add("peft")
    if spec.trainer == "sft":
        needed |= {"trl", "datasets"}
    if spec.load_in_4bit or (spec.optim and ("paged" in spec.optim or "8bit" in spec.optim)):
        needed.add("bitsandbytes")
    return sorted(name for name in needed if importlib.util.find_spec(name) is None)


def like_t4(spec: Spec) -> Spec:
    """The row in the precision its notebook picks on a T4 (no bf16 there): fp16 where the model
    is safe in it, else fp32, so a bigger GPU measures the memory a T4 would need. A recipe
    that asks for bf16 itself is not for a T4."""
    from nbutils.run import runtime

    t4 = dataclasses.replace(spec, notes=list(spec.notes))
    if spec.precision == "bf16":
        t4.no_training = "asks for bf16: not a T4 recipe (--like t4)"
        return t4
    if spec.precision == "auto":
        safe = runtime.model_fp16_safe(MODELS[spec.model_name]["model_type"])
        t4.precision = "fp16" if safe else "fp32"
        t4.notes.append(f"--like t4: {t4.precision}, as 'auto' picks on a T4")
    return t4


def skip_reason(spec: Spec, gpus: int | None, elapsed: float, budget_s: float) -> str:
    """Why this row cannot run here ("" where it can). `gpus`: the GPUs here, None on a CPU
    (a tiny check runs several processes there, over gloo)."""
    missing = missing_packages(spec) if not spec.no_training else []
    if spec.no_training:
        return spec.no_training
    if missing:
        return f"needs {', '.join(missing)} (not installed)"
    if gpus is not None and spec.processes > gpus:
        return f"needs {spec.processes} GPUs, this machine has {gpus}"
    if budget_s and elapsed > budget_s:
        return f"not started: {elapsed:.0f} s of the {budget_s:.0f} s budget spent"
    return ""


class SyntheticRows:
    """A map-style dataset of fixed-shape rows of random token ids (classification, seq2seq)."""

    def __init__(self, spec: Spec, config, rows: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        vocab = config.vocab_size
        self.rows = []
        for _ in range(rows):
            row = {"input_ids": rng.integers(4, vocab, spec.length).tolist(), "attention_mask": [1] * spec.length}
            row["labels"] = (rng.integers(4, vocab, spec.target_length).tolist() if spec.trainer == "seq2seq"
                             else int(rng.integers(2)))
            self.rows.append(row)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def sft_rows(spec: Spec, config, rows: int, seed: int = 0):
    """Pre-tokenized examples (the form TRL takes as is), with the prompt's first fifth masked out
    of the loss; lengths drawn from the data's profile, cut at max_length."""
    from datasets import Dataset

    from tools import bench

    rng = np.random.default_rng(seed)
    if spec.profile == "guanaco":
        scale = spec.length / 1024  # the profile is for the full recipe's 1024-token rows
        lengths = np.maximum(8, np.rint(bench.GUANACO_ROW.sample(rows, rng, cap=10 ** 6) * scale)).astype(int)
        lengths = np.minimum(lengths, spec.length)
    else:
        lengths = np.full(rows, spec.length)
    ids = [rng.integers(4, config.vocab_size, n).tolist() for n in lengths]
    masks = [[0] * (n // 5) + [1] * (n - n // 5) for n in lengths]
    return Dataset.from_dict({"input_ids": ids, "completion_mask": masks}), lengths


def word_tokenizer(vocab: int):
    from tools import bench

    return bench.tokenizer(vocab)


def run_row(spec: Spec, tiny: bool, steps: int, work: Path) -> dict:
    """Load, train `steps` optimizer steps (the first a warm-up), measure. In-process; in a
    launched process (several) each process measures its own."""
    import torch
    from transformers import PrinterCallback

    from nbutils import batching, lora
    from nbutils.parallel import distributed as parallel
    from nbutils.parallel import memory
    from nbutils.run import runtime

    cuda = torch.cuda.is_available()
    if cuda and runtime.processes() > 1:
        torch.cuda.set_device(runtime.local_rank())
    meter = Memory(cuda)
    config = model_config(spec.model_name, spec.task, tiny)
    flags = runtime.training_precision(spec.precision, model_type=config.model_type)
    compute = runtime.compute_dtype(flags)
    precision = memory.precision_of(flags)
    checkpoint = memory.checkpoint_dtype(config)
    load_dtype = compute if spec.weights == "compute" else torch_dtype(checkpoint)
    checkpointing = spec.checkpointing and cuda  # the notebooks checkpoint only on a GPU
    row = {"precision": precision, "weights_dtype": str(load_dtype).replace("torch.", ""),
           "activation_checkpointing": checkpointing}

    # As `run.quant_storage`: under FSDP the 4-bit weights are packed into the compute dtype.
    storage = compute if spec.distributed == "fsdp" else None
    quantization = (lora.bnb_4bit_config(spec.quant_type, spec.double_quant, compute, storage)
                    if spec.load_in_4bit else None)
    state = random_state_dict(config, spec.task, torch_dtype(checkpoint), "cuda" if cuda else "cpu")
    model_class = type(memory.meta_model(config, spec.task))
    meter.reset()
    started = time.perf_counter()
    # As the notebooks load: 4-bit (or, for causal LMs, every) model placed by device_map.
    placed = spec.trainer == "sft" or quantization is not None
    model = model_class.from_pretrained(None, config=config, state_dict=state, quantization_config=quantization,
                                        dtype=load_dtype, device_map=runtime.device_map() if placed else None)
    del state
    row["load_s"] = round(time.perf_counter() - started, 2)
    row["load_peak"] = meter.peak()
    if quantization is not None and not cuda:
        lora.keep_4bit_training_layout(model)

    examples_per_step = spec.batch_size * spec.accumulation * max(1, runtime.processes())
    args = dict(output_dir=str(work), max_steps=steps, learning_rate=spec.learning_rate,
                weight_decay=spec.weight_decay, max_grad_norm=spec.max_grad_norm, lr_scheduler_type="constant",
                logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
                seed=42, use_cpu=not cuda, dataloader_pin_memory=cuda, include_num_input_tokens_seen="all",
                **flags, **({"optim": spec.optim} if spec.optim else {}))
    peft_config = None
    if spec.lora:
        make = {"sft": lora.causal_lm_lora_config, "seq2seq": lora.seq2seq_lora_config}[spec.trainer]
        extra = ((spec.lora["modules_to_save"], model.config.tie_word_embeddings) if spec.trainer == "sft" else ())
        peft_config = make(spec.lora["r"], spec.lora["alpha"], spec.lora["dropout"], spec.lora["targets"], *extra)
    if spec.trainer == "sft":
        from trl import SFTConfig, SFTTrainer

        data, lengths = sft_rows(spec, config, GUANACO_ROWS if spec.profile else examples_per_step * (steps + 2))
        decision = batching.sft_batching(model, spec.batch_size, spec.accumulation, spec.length,
                                         lengths=lengths if spec.profile else None, verbose=False)
        row["batching"] = decision.reason
        sft = SFTConfig(**{**args, **decision.config, "activation_checkpointing": checkpointing,
                           "completion_only_loss": True, "dataset_num_proc": None,
                           **parallel.training_arguments(spec.distributed, model, checkpointing)})
        trainer = SFTTrainer(model=model, args=sft, train_dataset=data, processing_class=word_tokenizer(config.vocab_size),
                             peft_config=peft_config)
        rows_per_forward = sft.per_device_train_batch_size
        if spec.load_in_4bit and compute != torch.bfloat16:
            lora.trainable_to_float32(trainer.model)  # as the notebook: TRL made them bf16
    else:
        from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

        if peft_config is not None:
            model = lora.add_lora(model, peft_config, quantized=spec.load_in_4bit)
        data = SyntheticRows(spec, config, examples_per_step * (steps + 1))
        arguments = dict(args, per_device_train_batch_size=spec.batch_size,
                         gradient_accumulation_steps=spec.accumulation,
                         **parallel.training_arguments(spec.distributed, model))
        if spec.trainer == "seq2seq":
            trainer = Seq2SeqTrainer(model=model, args=Seq2SeqTrainingArguments(**arguments), train_dataset=data)
        else:
            trainer = Trainer(model=model, args=TrainingArguments(**arguments), train_dataset=data)
        rows_per_forward = spec.batch_size
    parallel.prepare(trainer)  # the notebooks' one multi-process call: FSDP really on, or a stop
    clock = step_clock(cuda)
    trainer.add_callback(clock)
    trainer.remove_callback(PrinterCallback)  # the table says it; no log line per step

    meter.reset()
    output = trainer.train()
    row["train_peak"] = meter.peak()
    if cuda:
        free, total = torch.cuda.mem_get_info()
        row["device_used_after_training"] = total - free  # paged optimizer state and NCCL included
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    row["losses"] = losses
    row["loss_finite"] = bool(losses) and all(math.isfinite(x) for x in losses) and math.isfinite(output.training_loss)
    measured = clock.seconds[1:] or clock.seconds  # the first step warms up
    tokens_per_step = trainer.state.num_input_tokens_seen / max(1, trainer.state.global_step)
    if spec.trainer == "seq2seq":  # the decoder's tokens count too
        tokens_per_step += spec.target_length * examples_per_step
    row["steps"] = trainer.state.global_step
    row["step_s"] = [round(s, 4) for s in clock.seconds]
    row["tokens_per_step"] = round(tokens_per_step, 1)
    row["tokens_per_s"] = round(tokens_per_step * len(measured) / sum(measured), 1) if measured else None
    row["shape"] = {"rows_per_forward": rows_per_forward, "length": spec.length,
                    "target_length": spec.target_length or None,
                    "accumulation": trainer.args.gradient_accumulation_steps, "processes": runtime.processes()}

    # The notebook's estimate, at the shapes run here (one forward's rows, not the recipe's batch).
    row["estimate"] = estimate = memory.estimate_training_memory(
        config, spec.task, precision=precision, weight_dtype=memory.dtype_name(load_dtype),
        distributed=spec.distributed, processes=max(1, runtime.processes()),
        lora_config=peft_config, quantized_4bit=spec.load_in_4bit, double_quant=spec.double_quant,
        batch_size=rows_per_forward, seq_len=spec.length, target_len=spec.target_length or None,
        checkpointing=checkpointing, cuda_context=cuda)
    estimate["model"] = spec.model_name

    if runtime.processes() == 1:
        flops, tokens = model_flops(trainer, checkpointing)
        peak, why = device_peak_flops(precision)
        row["model_flops_per_token"] = round(flops / tokens, 1) if tokens else None
        row["mfu"] = (round(flops / tokens * row["tokens_per_s"] / peak, 4)
                      if peak and tokens and row["tokens_per_s"] else None)
        if row["mfu"] is None:
            row["mfu_note"] = why
    else:
        row["mfu"], row["mfu_note"] = None, "not counted in a multi-process row"
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def summarize(row: dict, context: int, cuda: bool) -> dict:
    """The measured peak beside the estimate: their ratio."""
    estimate = row["estimate"]["bytes_per_process"]["peak"]
    if cuda:
        allocated = max(row["load_peak"]["allocated"], row["train_peak"]["allocated"])
        reserved = max(row["load_peak"]["reserved"], row["train_peak"]["reserved"])
        row["peak"] = {"allocated": allocated, "reserved": reserved, "cuda_context": context,
                       "measure": "CUDA allocator (max_memory_allocated / max_memory_reserved) + CUDA context"}
        measured = allocated + context
    else:
        rise = max(row["load_peak"].get("rss_rise", 0), row["train_peak"].get("rss_rise", 0))
        row["peak"] = {"rss_rise": rise, "measure": "CPU: rise of the process's peak resident set (VmHWM), "
                       "not GPU memory" + ("" if row["train_peak"].get("resettable", True) else
                                           " (peak could not be reset: since the process started)")}
        measured = rise
    row["measured_over_estimate"] = round(measured / estimate, 3) if estimate else None
    return row


def launch_row(spec: Spec, options, work: Path, timeout: float) -> dict:
    """A row of several processes: this module in `spec.processes` processes (torchrun), each
    measuring itself; the row is their maximum peak and the main process's speed."""
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # gloo, as nbutils.parallel.launch does on a CPU
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(spec.processes), "-m", "tools.gpu_check", "--worker", spec.project, "--worker-dir", str(work),
               "--steps", str(options.steps)] + (["--tiny"] if options.tiny else [])
    log = work / "launch.log"
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=max(60.0, timeout))
    ranks = [json.loads(p.read_text()) for p in sorted(work.glob("rank*.json"))]
    if done.returncode or len(ranks) != spec.processes:
        tail = log.read_text().strip().splitlines()[-15:]
        raise RuntimeError(f"{spec.processes} processes exited {done.returncode}: " + " | ".join(tail))
    row = ranks[0]
    for key in ("load_peak", "train_peak"):
        row[key] = {k: max(r[key][k] for r in ranks) for k in row[key] if isinstance(row[key][k], (int, float))}
    row["loss_finite"] = all(r["loss_finite"] for r in ranks)
    row["per_process"] = [{k: r[k] for k in ("load_peak", "train_peak")} for r in ranks]
    return row


def worker(project: str, directory: Path, tiny: bool, steps: int) -> int:
    """One launched process of a multi-process row: measure and write its own file."""
    from nbutils.run import runtime

    spec = next(s for s in recipe_specs(ROOT, [project]) if s.project == project)
    spec = tiny_spec(spec) if tiny else spec
    with tempfile.TemporaryDirectory() as work:
        row = run_row(spec, tiny, steps, Path(work))
    (directory / f"rank{runtime.rank()}.json").write_text(json.dumps(row, default=str))
    return 0


# ----------------------------------------------------------------------------------------------
# The table


def _size(n, cuda: bool) -> str:
    """GiB on a GPU; MiB at tiny width on a CPU, where GiB would all read 0.00."""
    if not isinstance(n, (int, float)):
        return "-"
    return f"{n / GIB:.2f}" if cuda else f"{n / MIB:.1f}"


def columns(cuda: bool) -> list[str]:
    memory = (["peak alloc GiB", "peak reserved GiB", "context GiB", "estimate GiB"] if cuda
              else ["peak RSS rise MiB (CPU, not GPU)", "estimate MiB"])
    return ["project", "status", "model", "precision", "shape", *memory, "measured/estimate",
            "tokens/s", "MFU", "loss finite"]


def table_row(row: dict, cuda: bool) -> list[str]:
    if row["status"] not in ("ok", "same"):
        blank = ["-"] * (len(columns(cuda)) - 4)
        return [row["project"], row["status"], row.get("model", "-"), *blank, row.get("reason", "")]
    shape = row["shape"]
    text = f"{shape['rows_per_forward']}x{shape['length']}"
    if shape.get("target_length"):
        text += f"+{shape['target_length']}"
    if shape["accumulation"] > 1:
        text += f" acc{shape['accumulation']}"
    if shape["processes"] > 1:
        text += f" x{shape['processes']}proc"
    peak = row["peak"]
    measured = ([peak["allocated"], peak["reserved"], peak["cuda_context"]] if cuda else [peak["rss_rise"]])
    memory = [_size(n, cuda) for n in (*measured, row["estimate"]["bytes_per_process"]["peak"])]
    mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
    return [row["project"], row["status"], row["model"], row["precision"], text, *memory,
            f"{row['measured_over_estimate']:.2f}", f"{row['tokens_per_s']:.0f}", mfu,
            "yes" if row["loss_finite"] else "NO"]


def render(rows: list[dict], cuda: bool) -> str:
    head = columns(cuda)
    cells = [table_row(row, cuda) for row in rows]
    widths = [max(len(head[i]), *(len(c[i]) for c in cells if i < len(c))) for i in range(len(head))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths)), "-+-".join("-" * w for w in widths)]
    for c in cells:
        fixed = [v.ljust(w) for v, w in zip(c, widths)]
        lines.append(" | ".join(fixed + c[len(widths):]))  # a skip's reason runs on past the columns
    return "\n".join(lines)


def versions() -> dict:
    names = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "bitsandbytes")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), **found}


def device() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"kind": "cpu", "name": platform.processor() or platform.machine(), "count": 0,
                "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(0)
    return {"kind": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "memory_bytes": props.total_memory, "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda}


def check(options) -> dict:
    from nbutils.run import quiet

    quiet.install_filters()  # known library noise (bitsandbytes' optional CPU kernel), as in the notebooks
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    if not cuda and not options.tiny:
        raise SystemExit("gpu-check: no CUDA GPU here; `--tiny` runs the same rows at tiny width on the CPU")
    if options.tiny:
        torch.set_num_threads(1)  # tiny operations: one thread is fastest on a shared machine
    for name in ("peft", "trl", "datasets", "bitsandbytes"):  # not inside the first row's peak
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    gc.freeze()  # the libraries' objects: each collection between rows then takes milliseconds
    context = cuda_context_bytes() if cuda else 0
    gpus = torch.cuda.device_count() if cuda else 0
    started = time.perf_counter()
    rows, measured = [], {}

    def so_far() -> dict:
        return {"tiny": options.tiny, "like": options.like, "device": device(), "versions": versions(),
                "cuda_context_bytes": context, "seconds": round(time.perf_counter() - started, 1),
                "columns": columns(cuda), "rows": rows}

    for spec in recipe_specs(ROOT, options.only):
        write_json(options.out, so_far())  # before every row: a command stopped at its time limit keeps them
        spec = tiny_spec(spec) if options.tiny and not spec.no_training else spec
        if options.like == "t4" and not spec.no_training:
            spec = like_t4(spec)
        row = {"project": spec.project, "model": spec.model_name or "-", "notes": spec.notes,
               "settings": dataclasses.asdict(spec)}
        elapsed = time.perf_counter() - started
        reason = skip_reason(spec, gpus if cuda else None, elapsed, options.budget_s)
        if reason:
            rows.append({**row, "status": "skipped", "reason": reason})
            print(f"gpu-check: {spec.project}: skipped: {reason}", flush=True)
            continue
        key = spec.signature(options.tiny)
        if key in measured:
            rows.append({**measured[key], **row, "status": "same", "same_as": measured[key]["project"],
                         "reason": f"same training as {measured[key]['project']}: measured once"})
            print(f"gpu-check: {spec.project}: same training as {measured[key]['project']}", flush=True)
            continue
        print(f"gpu-check: {spec.project} ({spec.model_name}) ...", flush=True)
        row_started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as work:
                if spec.processes > 1:
                    remaining = (options.budget_s - elapsed) if options.budget_s else 600.0
                    result = launch_row(spec, options, Path(work), remaining)
                else:
                    result = run_row(spec, options.tiny, options.steps, Path(work))
            row = {**row, **summarize(result, context, cuda), "status": "ok"}
            measured[key] = row
        except Exception as err:  # the row fails, the command goes on
            message = f"{type(err).__name__}: {err}".splitlines()
            row = {**row, "status": "failed", "reason": " ".join(message)[:500]}
        # Out of the except block: its traceback no longer holds the failed row's model.
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        row["seconds"] = round(time.perf_counter() - row_started, 1)
        rows.append(row)
        print(f"gpu-check: {spec.project}: {row['status']} in {row['seconds']} s"
              + (f" ({row['reason']})" if row["status"] != "ok" else ""), flush=True)
    return so_far()


def write_json(path, result: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return out


# GPUs for `--estimate`: whether bf16 is native, and the memory they have (NVIDIA's datasheets:
# a T4 has 16 GB, of which about 15 GiB are usable; an L4 24 GB; an A100 40 or 80 GB).
ESTIMATE_GPUS = {"t4": (False, 15.0 * GIB), "l4": (True, 22.0 * GIB), "a100-40gb": (True, 39.4 * GIB),
                 "h100": (True, 79.1 * GIB)}


def estimate_row(spec: Spec, gpu: str, rows: int | None = None) -> dict:
    """The notebook's own memory estimate for this row on `gpu` (no GPU needed): at the recipe's
    lengths and `rows` per forward pass (default: the recipe's batch size, what the notebook
    passes), in the precision "auto" picks there (bf16 where native; else fp16 where the model
    is safe in it, else fp32), per process."""
    from nbutils.parallel import memory
    from nbutils.run import runtime

    native_bf16, capacity = ESTIMATE_GPUS[gpu]
    config = model_config(spec.model_name, spec.task)
    precision = spec.precision
    if precision == "auto":
        precision = "bf16" if native_bf16 else "fp16" if runtime.model_fp16_safe(config.model_type) else "fp32"
    if precision == "bf16" and not native_bf16 and spec.load_in_4bit and spec.distributed == "fsdp":
        return {"project": spec.project, "gpu": gpu, "status": "refused",
                "reason": "QLoRA under FSDP needs native bf16 (nbutils.lora)"}
    lora_config = None
    if spec.lora:
        from nbutils import lora

        lora_config = (lora.causal_lm_lora_config(spec.lora["r"], spec.lora["alpha"], spec.lora["dropout"],
                                                  spec.lora["targets"], spec.lora["modules_to_save"],
                                                  config.tie_word_embeddings) if spec.trainer == "sft" else
                       lora.seq2seq_lora_config(spec.lora["r"], spec.lora["alpha"], spec.lora["dropout"],
                                                spec.lora["targets"]))
    weights = precision if spec.weights == "compute" else memory.checkpoint_dtype(config)
    result = memory.estimate_training_memory(
        config, spec.task, precision=precision, weight_dtype=weights, distributed=spec.distributed,
        processes=spec.processes, lora_config=lora_config, quantized_4bit=spec.load_in_4bit,
        double_quant=spec.double_quant, batch_size=rows or spec.batch_size, seq_len=spec.length,
        target_len=spec.target_length or None, checkpointing=spec.checkpointing, cuda_context=True)
    peak = result["bytes_per_process"]["peak"]
    return {"project": spec.project, "gpu": gpu, "status": "fits" if peak <= capacity else "does not fit",
            "precision": precision, "processes": spec.processes, "peak": peak, "capacity": capacity,
            "estimate": result}


def print_estimates(gpu: str, only: list[str] | None = None) -> None:
    """`--estimate`: each row's estimated peak per GPU. SFT rows twice: at the recipe's batch
    (what the notebook prints before loading) and as its batching runs them with sdpa attention
    (transformers' default; packed rows, one per forward pass: `nbutils.batching.forward_layout`)."""
    from nbutils import batching

    for spec in recipe_specs(ROOT, only):
        if spec.no_training:
            continue
        shapes = [spec.batch_size]
        if spec.trainer == "sft":
            shapes.append(batching.forward_layout("sdpa", spec.batch_size * spec.accumulation, spec.accumulation)[0])
        figures = []
        for rows in shapes:
            row = estimate_row(spec, gpu, rows)
            if "peak" not in row:
                figures = [f"{row['status']}: {row['reason']}"]
                break
            shape = f"{rows}x{spec.length}" + (f"+{spec.target_length}" if spec.target_length else "")
            figures.append(f"{row['peak'] / GIB:5.1f} GiB at {shape} ({row['status']})")
        processes = f", {spec.processes} processes" if spec.processes > 1 else ""
        precision = f" {row['precision']}{processes}:" if "peak" in row else ""
        print(f"{spec.project:<40}{precision} {'; '.join(figures)}")
    print(f"(estimates, not measured: nbutils.parallel.memory, per GPU, at the recipes' lengths; "
          f"{gpu}: {ESTIMATE_GPUS[gpu][1] / GIB:.1f} GiB usable)")


# What a lent GPU machine lacks (it has torch, transformers, peft and accelerate): `make
# gpu-wheels` downloads these wheels for Python 3.12 on x86_64 Linux (about 43 MB), and
# `--install-wheels DIR` installs them there without an index. Without their dependencies
# (`--no-deps`): datasets' others (pyarrow, pandas, xxhash, fsspec) are on the machine already,
# and a resolver without an index would stop at any version it cannot fetch.
GPU_WHEELS = ("bitsandbytes==0.50.2", "trl==1.16.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19")


def install_wheels(folder: Path) -> None:
    """Install the carried wheels (`GPU_WHEELS`) from `folder` with pip, no index, no dependencies."""
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    names = [spec.split("==")[0] for spec in GPU_WHEELS]
    missing = [n for n in names if not any(Path(w).name.lower().startswith(n + "-") for w in wheels)]
    if missing:
        raise SystemExit(f"gpu-check: --install-wheels {folder}: no wheel for {', '.join(missing)} there "
                         f"(make gpu-wheels fetches them: {' '.join(GPU_WHEELS)})")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *wheels]
    if subprocess.run(command).returncode:
        # Where the interpreter's site-packages cannot be written: the user's, made visible here.
        subprocess.run(command + ["--user"], check=True)
        import site

        site.addsitedir(site.getusersitepackages())
    importlib.invalidate_caches()


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the same rows at tiny width, on a CPU")
    parser.add_argument("--only", nargs="+", metavar="PROJECT", help="these projects (or notebooks) only")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per row, the first a warm-up (default 4; tiny 2)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"start no row after this many seconds (default {DEFAULT_BUDGET_S}; tiny: none)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the JSON goes")
    parser.add_argument("--install-wheels", metavar="DIR", type=Path,
                        help="first pip-install the carried wheels in DIR (no index): " + ", ".join(GPU_WHEELS))
    parser.add_argument("--like", choices=["t4"],
                        help="train each row in the precision its notebook picks on that GPU (t4: fp16, "
                             "or fp32 for T5 and Qwen2), to measure the memory a T4 would need")
    parser.add_argument("--estimate", choices=sorted(ESTIMATE_GPUS), metavar="GPU",
                        help="print the notebooks' memory estimate of every row on this GPU kind "
                             f"({', '.join(sorted(ESTIMATE_GPUS))}) and exit: nothing is trained")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one process of a multi-process row
    parser.add_argument("--worker-dir", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.steps is None:
        options.steps = TINY_STEPS if options.tiny else 4
    if options.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up and not timed")
    if options.tiny and options.like:
        parser.error("--like picks a GPU's precision: it does not go with --tiny (a CPU trains in fp32)")
    if options.budget_s is None:
        options.budget_s = 0 if options.tiny else DEFAULT_BUDGET_S
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    if options.worker:
        return worker(options.worker, Path(options.worker_dir), options.tiny, options.steps)
    if options.install_wheels:
        install_wheels(options.install_wheels)
    if options.estimate:
        print_estimates(options.estimate, options.only)
        return 0
    result = check(options)
    cuda = result["device"]["kind"] == "cuda"
    print()
    print(render(result["rows"], cuda))
    print(f"\n{result['device']['name']}; torch {result['versions']['torch']}, transformers "
          f"{result['versions']['transformers']}; {result['seconds']} s"
          + ("" if cuda else "; tiny width on a CPU: memory is the process's resident set, not GPU memory"))
    print(f"gpu-check results: {write_json(options.out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
