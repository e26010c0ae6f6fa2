"""How much memory training needs per process, from the model's config alone, before any weights
are downloaded: so a user sees whether a model fits before paying for the download.

The parameters are counted on PyTorch's `meta` device (`AutoConfig` + `from_config` under
`torch.device("meta")`: shapes, no storage, no download beyond the config file), with the LoRA
adapter PEFT would add and the layers bitsandbytes would quantize, found the way transformers
finds them. Then, per parameter:

- **weights**: each parameter in the dtype it is stored in: fp32 4 bytes, fp16/bf16 2; a 4-bit
  (NF4/FP4) layer 0.5 byte plus its quantization constants (an fp32 scale per block of 64: 0.0625;
  with double quantization an 8-bit scale per block and an fp32 one per 256 blocks: 0.0159).
  Trainable parameters are fp32 where the model is loaded in fp32, and so is every LoRA adapter
  (PEFT keeps adapters in fp32); under mixed precision (fp16/bf16 autocast) the fp32 ones are the
  master copy and a 16-bit working copy of them is counted too (the "6 bytes per parameter" of
  transformers' "model memory anatomy" guide);
- **gradients**: one per trainable parameter, in its dtype; under DDP with several processes
  another copy in DDP's communication buckets (`gradient_as_bucket_view` off, the default);
- **optimizer state**: AdamW's two moments per trainable parameter, in its dtype (8 bytes for an
  fp32 one: torch's AdamW keeps them in the parameter's dtype).

Under DDP every process holds all of it; under FSDP each holds 1/processes of the weights,
gradients and optimizer state (each block's parameters are gathered whole just before use, one
block at a time: transient, not counted). Activations are not counted: they grow with batch x
length x layers x hidden; the note gives a rough figure (Korthikanti et al. 2022: about
s·b·h·(34 + 5·a·s/h) bytes per layer in 16 bit, without FlashAttention) and what activation
checkpointing saves. Neither are the CUDA context (about 0.5 GB), allocator fragmentation and
temporary buffers: leave some margin.
"""

from __future__ import annotations

import warnings

from nbutils.run import runtime
from nbutils.parallel.distributed import check_strategy

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BYTES = 0.5  # two 4-bit values per byte
QUANT_BLOCK = 64  # bitsandbytes' 4-bit block size
SCALE_BYTES = 4 / QUANT_BLOCK  # an fp32 absmax per block
DOUBLE_QUANT_SCALE_BYTES = 1 / QUANT_BLOCK + 4 / (QUANT_BLOCK * 256)  # 8-bit absmax, fp32 per 256 blocks
ADAMW_STATES = 2  # first and second moment
TASKS = ("causal_lm", "seq2seq_lm", "sequence_classification")
GIB = 2 ** 30


def dtype_name(dtype) -> str:
    """"fp32", "bf16" or "fp16" for a torch dtype or one of those names."""
    name = str(dtype).replace("torch.", "")
    names = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
    name = names.get(name, name)
    if name not in BYTES:
        raise ValueError(f"dtype must be one of fp32, bf16, fp16 (or a torch dtype), got {dtype!r}")
    return name


def precision_of(flags: dict) -> str:
    """The compute precision of Trainer flags `{"bf16": ..., "fp16": ...}`."""
    return "bf16" if flags.get("bf16") else "fp16" if flags.get("fp16") else "fp32"


def process_count(num_processes: int = 1) -> int:
    """Training processes: a notebook's `num_processes`, or those a launcher started (WORLD_SIZE)."""
    return max(int(num_processes or 1), runtime.processes())


def _auto_class(task: str):
    import transformers

    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return {"causal_lm": transformers.AutoModelForCausalLM, "seq2seq_lm": transformers.AutoModelForSeq2SeqLM,
            "sequence_classification": transformers.AutoModelForSequenceClassification}[task]


def load_config(model_name: str, trust_remote_code: bool = False, token=None, **overrides):
    """The model's config (`config.json` only: downloaded, for a hub id, without the weights)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_name, trust_remote_code=trust_remote_code, token=token, **overrides)


def meta_model(model_name, task: str, trust_remote_code: bool = False, token=None, **config_overrides):
    """The model built from its config (a config object, or the name to read it from) on the
    `meta` device: every parameter with its shape and no storage."""
    import torch

    config = (model_name if not isinstance(model_name, str)
              else load_config(model_name, trust_remote_code, token, **config_overrides))
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library's notes on the model: they come when it is really loaded
        return _auto_class(task).from_config(config, trust_remote_code=trust_remote_code)


def checkpoint_dtype(config) -> str:
    """The dtype `from_pretrained` loads weights in by default (transformers 5: "auto", the
    checkpoint's own, as its config records it); fp32 where the config says none."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    try:
        return dtype_name(dtype) if dtype is not None else "fp32"
    except ValueError:
        return "fp32"


def quantized_weights(model, skip_modules=()) -> int:
    """Parameters bitsandbytes would store in 4 bits: the weights of the linear layers, except
    those transformers keeps in full precision (the output head, tied and last weights)."""
    import torch
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    keep = list(get_keys_to_not_convert(model)) + list(skip_modules or ())
    return sum(module.weight.numel() for name, module in model.named_modules()
               if (type(module) is torch.nn.Linear or isinstance(module, Conv1D))
               and should_convert_module(name, keep))


def parameter_layout(model, lora_config=None, quantize: bool = False, prepare=None) -> dict:
    """Count a (meta) model's parameters: total, trainable and 4-bit quantized.

    `lora_config`: a `peft.LoraConfig` whose adapter (and modules_to_save) is what trains; without
    one every parameter trains, or those `prepare(model)` leaves trainable (e.g. a freezing
    function, in place; one that returns a model gives the model counted). Shared (tied) parameters count once.
    """
    import torch

    quantized = quantized_weights(model) if quantize else 0
    if prepare is not None:
        prepared = prepare(model)  # in place (a freezing function), or a new model
        model = prepared if isinstance(prepared, torch.nn.Module) else model
    if lora_config is not None:
        import copy

        from peft import get_peft_model

        with torch.device("meta"), warnings.catch_warnings():  # its notes come again with the real model
            warnings.simplefilter("ignore")
            model = get_peft_model(model, copy.deepcopy(lora_config))  # PEFT writes into its config: a copy
    parameters = {id(p): p for p in model.parameters()}.values()
    return {"total": sum(p.numel() for p in parameters),
            "trainable": sum(p.numel() for p in parameters if p.requires_grad),
            "quantized": quantized, "lora": lora_config is not None}


def estimate(layout: dict, precision: str = "fp32", weight_dtype="fp32", distributed: str = "ddp",
             processes: int = 1, quantized_4bit: bool = False, double_quant: bool = True) -> dict:
    """Bytes per process for weights, gradients and AdamW state (see the module docstring).

    `layout`: from `parameter_layout`. `precision`: the compute precision (fp32, or fp16/bf16
    mixed precision). `weight_dtype`: the dtype the model is loaded in (the frozen and, in full
    fine-tuning, the trained weights). `quantized_4bit`: the layout's quantized weights are 4-bit.
    """
    precision, weight_dtype = dtype_name(precision), dtype_name(weight_dtype)
    check_strategy(distributed)
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a whole number >= 1, got {processes!r}")
    total, trainable = layout["total"], layout["trainable"]
    quantized = layout["quantized"] if quantized_4bit else 0
    frozen_plain = total - trainable - quantized
    # Trained parameters are fp32 where the model loads in fp32 and for LoRA adapters; a fully
    # fine-tuned model loaded in 16 bits trains in 16 bits.
    train_dtype = "fp32" if layout["lora"] or weight_dtype == "fp32" else weight_dtype
    train_bytes = BYTES[train_dtype]
    mixed = precision != "fp32" and train_dtype == "fp32"
    per_quantized = NF4_BYTES + (DOUBLE_QUANT_SCALE_BYTES if double_quant else SCALE_BYTES)
    shards = processes if distributed == "fsdp" else 1
    weights = (frozen_plain * BYTES[weight_dtype] + quantized * per_quantized + trainable * train_bytes) / shards
    working_copy = trainable * BYTES[precision] if mixed and distributed == "ddp" else 0
    gradients = trainable * train_bytes / shards
    buckets = gradients if distributed == "ddp" and processes > 1 else 0
    optimizer = ADAMW_STATES * trainable * train_bytes / shards
    parts = {"weights": weights + working_copy, "gradients": gradients + buckets, "optimizer": optimizer}
    return {
        "strategy": distributed, "processes": processes, "precision": precision,
        "weights_dtype": "4-bit" if quantized else weight_dtype, "trainable_dtype": train_dtype,
        "parameters": {"total": total, "trainable": trainable, "quantized_4bit": quantized},
        "bytes_per_process": {**{k: int(round(v)) for k, v in parts.items()},
                              "total": int(round(sum(parts.values())))},
        "included": {"mixed_precision_working_copy": int(round(working_copy)),
                     "ddp_gradient_buckets": int(round(buckets))},
    }


def activation_note(config, batch_size: int | None = None, seq_len: int | None = None,
                    precision: str = "bf16", checkpointing: bool = False) -> str:
    """One line on activations, with a rough figure when the batch size and length are known."""
    note = ("activations (not counted) grow with batch x length x layers x hidden; activation "
            "checkpointing keeps about one tensor per layer and recomputes the rest")
    try:
        hidden, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    except AttributeError:
        return note
    if not (batch_size and seq_len):
        return note
    layers *= 2 if getattr(config, "is_encoder_decoder", False) else 1
    scale = BYTES[dtype_name(precision)] / 2  # the formula counts 16-bit activations
    s, b, h = seq_len, batch_size, hidden
    full = layers * s * b * h * (34 + 5 * heads * s / h) * scale
    kept = (layers * 2 * s * b * h + s * b * h * (34 + 5 * heads * s / h)) * scale
    return (f"{note}: roughly {human(full)} per process at batch {b} x {s} tokens "
            f"({human(kept)} with checkpointing{', on here' if checkpointing else ''})")


def human(n_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number at or above 1 (1.50 GiB, 395 KiB)."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def describe(result: dict) -> str:
    """The estimate as a few printable lines."""
    b = result["bytes_per_process"]
    p = result["parameters"]
    sharding = (f"FSDP over {result['processes']} processes: each holds 1/{result['processes']}"
                if result["strategy"] == "fsdp" else
                f"DDP, {result['processes']} process{'es' if result['processes'] > 1 else ''}: each holds all")
    lines = [f"memory estimate before loading ({sharding}; {p['total']:,} parameters, {p['trainable']:,} "
             f"trainable in {result['trainable_dtype']}, weights in {result['weights_dtype']}, "
             f"compute in {result['precision']}), per process:"]
    for name in ("weights", "gradients", "optimizer", "total"):
        label = {"optimizer": "AdamW state"}.get(name, name)
        lines.append(f"  {label:<12} {human(b[name]):>10}")
    if result.get("activations"):
        lines.append(f"  {result['activations']}")
    return "\n".join(lines)


def estimate_training_memory(model_name: str, task: str, *, precision: str = "fp32", weight_dtype="auto",
                             distributed: str = "ddp", processes: int = 1, lora_config=None,
                             quantized_4bit: bool = False, double_quant: bool = True, prepare=None,
                             batch_size: int | None = None, seq_len: int | None = None,
                             checkpointing: bool = False, trust_remote_code: bool = False, token=None,
                             **config_overrides) -> dict:
    """`estimate` for `model_name` from its config alone, with the activation note; the record's
    `train.memory_estimate`. `weight_dtype` "auto": the checkpoint's own dtype, what
    `from_pretrained` loads without a `dtype`."""
    config = load_config(model_name, trust_remote_code, token, **config_overrides)
    if weight_dtype == "auto":
        weight_dtype = checkpoint_dtype(config)
    model = meta_model(config, task, trust_remote_code)
    result = estimate(parameter_layout(model, lora_config, quantized_4bit, prepare), precision,
                      weight_dtype, distributed, processes, quantized_4bit, double_quant)
    result["model"] = model_name
    result["activations"] = activation_note(config, batch_size, seq_len, precision, checkpointing)
    return result
