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
block at a time: transient, not counted).

Where the batch size and length are known, the peak while training adds:

- **activations**: a rough figure (Korthikanti et al. 2022: about s·b·h·(34 + 5·a·s/h) bytes
  per layer in 16 bit, without FlashAttention, so rather high where attention runs in a fused
  kernel; a decoder's layers at the target's length, attending to it and to the source); with
  activation checkpointing, one 16-bit tensor per layer plus one layer's worth recomputed in the
  backward pass;
- **logits**: batch x length x vocabulary, three fp32 copies at once (`LOGIT_COPIES`): the loss
  upcasts the logits to fp32 and keeps their log-softmax for the backward pass, whose gradient
  arrives and leaves in fp32 too. For a sequence-to-sequence model the length is the target's
  (`target_len`); a classifier's logits are negligible;
- **the CUDA context** (`CUDA_CONTEXT_BYTES`): the driver's and the kernels' own memory, which
  PyTorch's allocator does not count, on a GPU.

And the **load-time peak**: while `from_pretrained` loads the model, before training. One process,
or DDP: the model as loaded, plus its largest tensor in transit. FSDP: the same, whole, in every
process: the notebooks load each process's copy on its own GPU and shard it afterwards, and even
with `cpu_ram_efficient_loading` (the main process loads, the others receive their shards)
accelerate (1.15) and transformers (5.24) load a 4-bit model whole in every process (both skip
that path for bitsandbytes' 4-bit parameters). So 13B QLoRA under FSDP holds its whole 4-bit
model, about 6.7 GiB, on each GPU while loading, not half of it.

The peak per process is the larger of the two. Allocator fragmentation and temporary buffers are
not counted: the measured reserved memory is higher (`make gpu-check` reports the ratio). Where
the batch size or a length is unknown, the activations or logits are left out and the estimate
says it is a lower bound.
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
# fp32 logits alive at once at the loss's peak: the log-softmax kept for the backward pass, the
# gradient arriving at it and the one it passes back (the forward holds no more: the 16-bit
# logits, their fp32 copy and the log-softmax).
LOGIT_COPIES = 3
# The CUDA context and the libraries' workspaces (cuBLAS, cuDNN) that PyTorch's allocator does not
# count: about 0.5 GB with lazily loaded kernels (CUDA 11.7+), the figure `make gpu-check` measures.
CUDA_CONTEXT_BYTES = 512 * 2 ** 20
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
    """Count a (meta) model's parameters: total, trainable and 4-bit quantized, and the largest
    parameter of the model as loaded (the tensor in transit at the load-time peak).

    `lora_config`: a `peft.LoraConfig` whose adapter (and modules_to_save) is what trains; without
    one every parameter trains, or those `prepare(model)` leaves trainable (e.g. a freezing
    function, in place; one that returns a model gives the model counted). Shared (tied) parameters count once.
    """
    import torch

    quantized = quantized_weights(model) if quantize else 0
    largest = max((p.numel() for p in model.parameters()), default=0)
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
            "quantized": quantized, "lora": lora_config is not None, "largest": largest}


def estimate(layout: dict, precision: str = "fp32", weight_dtype="fp32", distributed: str = "ddp",
             processes: int = 1, quantized_4bit: bool = False, double_quant: bool = True, *,
             activation_bytes: float | None = None, logit_bytes: float | None = None,
             cuda_context: bool = False) -> dict:
    """Bytes per process for weights, gradients and AdamW state, and the peaks (see the module
    docstring).

    `layout`: from `parameter_layout`. `precision`: the compute precision (fp32, or fp16/bf16
    mixed precision). `weight_dtype`: the dtype the model is loaded in (the frozen and, in full
    fine-tuning, the trained weights). `quantized_4bit`: the layout's quantized weights are 4-bit.
    `activation_bytes`, `logit_bytes`: per process, where known (None: left out, and the result
    is a lower bound). `cuda_context`: add `CUDA_CONTEXT_BYTES` (training on a GPU).

    `bytes_per_process`: weights, gradients, optimizer and their sum `total` (the model state),
    then activations, logits and cuda_context (0 where not counted), `training_peak` (all of
    them), `load_peak` (the model as loaded, its largest tensor in transit and the context) and
    `peak`, the larger of the two.
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
    state = sum(parts.values())
    context = CUDA_CONTEXT_BYTES if cuda_context else 0
    training_peak = state + (activation_bytes or 0) + (logit_bytes or 0) + context
    # Loading: the base model as from_pretrained leaves it (LoRA adapters come later), whole in
    # every process, FSDP included (see the module docstring), plus its largest tensor in transit
    # in the load dtype.
    loaded_trainable = 0 if layout["lora"] else trainable
    loaded = ((total - trainable - quantized + loaded_trainable) * BYTES[weight_dtype]
              + quantized * per_quantized)
    load_peak = loaded + layout.get("largest", 0) * BYTES[weight_dtype] + context
    left_out = [name for name, value in (("activations", activation_bytes), ("logits", logit_bytes))
                if value is None]
    counted = {**parts, "total": state, "activations": activation_bytes or 0, "logits": logit_bytes or 0,
               "cuda_context": context, "training_peak": training_peak, "load_peak": load_peak,
               "peak": max(training_peak, load_peak)}
    return {
        "strategy": distributed, "processes": processes, "precision": precision,
        "weights_dtype": "4-bit" if quantized else weight_dtype, "trainable_dtype": train_dtype,
        "parameters": {"total": total, "trainable": trainable, "quantized_4bit": quantized},
        "bytes_per_process": {k: int(round(v)) for k, v in counted.items()},
        "included": {"mixed_precision_working_copy": int(round(working_copy)),
                     "ddp_gradient_buckets": int(round(buckets))},
        "left_out": left_out, "lower_bound": bool(left_out),
        "peak_at": "loading" if load_peak > training_peak else "training",
    }


def _activation_figures(config, batch_size, seq_len, precision, target_len=None):
    """(without, with activation checkpointing) bytes per process, or None where unknown. An
    encoder-decoder's decoder layers run at `target_len` and attend to the source too (its
    encoder's length for both where `target_len` is unknown)."""
    try:
        hidden, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    except AttributeError:
        return None
    if not (batch_size and seq_len):
        return None
    scale = BYTES[dtype_name(precision)] / 2  # the formula counts 16-bit activations
    b, h = batch_size, hidden

    def layer(s, attended):  # one layer's activations: s positions attending to `attended`
        return s * b * h * (34 + 5 * heads * attended / h)

    stack = [(layers, seq_len, seq_len)]
    if getattr(config, "is_encoder_decoder", False):
        target = target_len or seq_len
        decoder_layers = getattr(config, "num_decoder_layers", None) or layers
        stack.append((decoder_layers, target, target + seq_len))  # self- and cross-attention
    full = sum(n * layer(s, a) for n, s, a in stack)
    kept = sum(n * 2 * s * b * h for n, s, _ in stack) + max(layer(s, a) for _, s, a in stack)
    return full * scale, kept * scale


def activation_bytes(config, batch_size: int | None = None, seq_len: int | None = None,
                     precision: str = "bf16", checkpointing: bool = False,
                     target_len: int | None = None) -> float | None:
    """Rough activation bytes per process (see the module docstring), or None where the batch
    size, the length or the model's width is unknown."""
    figures = _activation_figures(config, batch_size, seq_len, precision, target_len)
    return None if figures is None else figures[1 if checkpointing else 0]


def activation_note(config, batch_size: int | None = None, seq_len: int | None = None,
                    precision: str = "bf16", checkpointing: bool = False, target_len: int | None = None) -> str:
    """One line on activations, with the rough figure when the batch size and length are known."""
    figures = _activation_figures(config, batch_size, seq_len, precision, target_len)
    if figures is None:
        return ("activations (not counted: batch size or length unknown) grow with batch x length x "
                "layers x hidden; activation checkpointing keeps about one tensor per layer and "
                "recomputes the rest")
    full, kept = figures
    return (f"activations (rough): {human(full)} per process at batch {batch_size} x {seq_len} tokens, "
            f"{human(kept)} with activation checkpointing{' (on here: counted)' if checkpointing else ''}")


def logit_bytes(config, task: str, batch_size: int | None = None, seq_len: int | None = None,
                target_len: int | None = None) -> float | None:
    """The loss's fp32 logits at their peak (`LOGIT_COPIES`), or None where a length is unknown:
    batch x length x vocabulary for a causal LM, x the target length for a sequence-to-sequence
    one; 0 for a classifier (a few numbers per example)."""
    if not batch_size:
        return None
    if task == "sequence_classification":
        return 0
    length = target_len if task == "seq2seq_lm" else seq_len
    vocab = getattr(config, "vocab_size", None)
    if not (length and vocab):
        return None
    return batch_size * length * vocab * 4 * LOGIT_COPIES


def human(n_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number at or above 1 (1.50 GiB, 395 KiB)."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def describe(result: dict) -> str:
    """The estimate as a few printable lines; "(lower bound)" where something is left out."""
    b = result["bytes_per_process"]
    p = result["parameters"]
    sharding = (f"FSDP over {result['processes']} processes: each holds 1/{result['processes']}"
                if result["strategy"] == "fsdp" else
                f"DDP, {result['processes']} process{'es' if result['processes'] > 1 else ''}: each holds all")
    left_out = result.get("left_out", [])
    label = "memory estimate (lower bound)" if left_out else "memory estimate"
    lines = [f"{label} before loading ({sharding}; {p['total']:,} parameters, {p['trainable']:,} "
             f"trainable in {result['trainable_dtype']}, weights in {result['weights_dtype']}, "
             f"compute in {result['precision']}), per process:"]
    rows = [("weights", "weights"), ("gradients", "gradients"), ("optimizer", "AdamW state"),
            ("activations", "activations"), ("logits", "logits"), ("cuda_context", "CUDA context"),
            ("training_peak", "training"), ("load_peak", "loading"), ("peak", "peak")]
    for key, label in rows:
        if key not in b or (key in ("activations", "logits") and key in left_out):
            continue
        if key == "cuda_context" and not b[key]:
            continue
        lines.append(f"  {label:<13} {human(b[key]):>10}")
    if result.get("activations"):
        lines.append(f"  {result['activations']}")
    if left_out:
        lines.append(f"  left out: {', '.join(left_out)} (batch size or length unknown): the peak is higher")
    return "\n".join(lines)


def estimate_training_memory(model_name, task: str, *, precision: str = "fp32", weight_dtype="auto",
                             distributed: str = "ddp", processes: int = 1, lora_config=None,
                             quantized_4bit: bool = False, double_quant: bool = True, prepare=None,
                             batch_size: int | None = None, seq_len: int | None = None,
                             checkpointing: bool = False, trust_remote_code: bool = False, token=None,
                             target_len: int | None = None, cuda_context: bool | None = None,
                             **config_overrides) -> dict:
    """`estimate` for `model_name` (a hub id or folder, or a config object) from its config
    alone, with the activations and logits at `batch_size` x `seq_len` (`target_len`: a
    sequence-to-sequence model's target length, which its logits span); the record's
    `train.memory_estimate`. `weight_dtype` "auto": the checkpoint's own dtype, what
    `from_pretrained` loads without a `dtype`. `cuda_context` None: counted where there is a GPU."""
    config = (load_config(model_name, trust_remote_code, token, **config_overrides)
              if isinstance(model_name, str) else model_name)
    if weight_dtype == "auto":
        weight_dtype = checkpoint_dtype(config)
    if cuda_context is None:
        import torch

        cuda_context = torch.cuda.is_available()
    model = meta_model(config, task, trust_remote_code)
    result = estimate(parameter_layout(model, lora_config, quantized_4bit, prepare), precision,
                      weight_dtype, distributed, processes, quantized_4bit, double_quant,
                      activation_bytes=activation_bytes(config, batch_size, seq_len, precision, checkpointing,
                                                        target_len),
                      logit_bytes=logit_bytes(config, task, batch_size, seq_len, target_len),
                      cuda_context=cuda_context)
    result["model"] = model_name if isinstance(model_name, str) else getattr(config, "name_or_path", "")
    result["activations"] = activation_note(config, batch_size, seq_len, precision, checkpointing, target_len)
    return result
