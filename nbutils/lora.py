"""LoRA and QLoRA settings from notebook parameters, and merging an adapter for inference.

Shared by the PEFT notebooks; each adds its own clearly separate functions here. The
instruction-tuning (causal LM) ones: `causal_lm_lora_config`, `bnb_4bit_config`,
`keep_4bit_training_layout` and `trainable_to_float32` (QLoRA on a CPU and in fp16),
`merge_adapter_and_save`.
Generic ones, for every model: `check_target_modules` (names a module the model lacks and lists
the ones it has), `add_lora` (QLoRA preparation + adapter), and `seq2seq_lora_config` for
encoder-decoder models (FLAN-T5, T5). A PEFT model's parameters are counted (4-bit aware) by
`nbutils.run.record.count_parameters`, like every model's.
"""

from __future__ import annotations

from pathlib import Path

QUANT_TYPES = ("nf4", "fp4")


def _target_modules(target_modules):
    """`["all-linear"]` (or "all-linear") is PEFT's shorthand for every linear layer but the head."""
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    modules = list(target_modules or [])
    if not modules or not all(isinstance(m, str) and m for m in modules):
        raise ValueError(f"lora_target_modules must be a list of module names (or ['all-linear']), "
                         f"got {target_modules!r}")
    return "all-linear" if modules == ["all-linear"] else modules


def _lora_config(task_type: str, r: int, alpha: float, dropout: float, target_modules,
                 modules_to_save=None, tied_embeddings: bool = False):
    """A checked `peft.LoraConfig` (no bias training) for `task_type`."""
    from peft import LoraConfig

    if r < 1:
        raise ValueError(f"lora_r must be a positive rank, got {r!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {dropout!r}")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=_target_modules(target_modules), bias="none",
                      modules_to_save=list(modules_to_save or []) or None, task_type=task_type,
                      # A model whose output layer is its input embeddings (Qwen2, tied): training
                      # one in full trains the other too, one copy, tied still after merging.
                      # PEFT warns when asked on an untied model, so only there.
                      ensure_weight_tying=bool(tied_embeddings and modules_to_save))


def causal_lm_lora_config(r: int, alpha: float, dropout: float, target_modules,
                          modules_to_save=None, tied_embeddings: bool = False):
    """A `peft.LoraConfig` for a decoder-only model (task CAUSAL_LM, no bias training).

    `modules_to_save` (such as `["lm_head"]`) are trained in full beside the adapters and saved
    with them; `tied_embeddings`: the model's `config.tie_word_embeddings`."""
    return _lora_config("CAUSAL_LM", r, alpha, dropout, target_modules, modules_to_save, tied_embeddings)


def bnb_4bit_config(quant_type: str = "nf4", double_quant: bool = True, compute_dtype=None,
                    storage_dtype=None):
    """`BitsAndBytesConfig` for QLoRA: 4-bit base weights, computed in `compute_dtype`.

    The QLoRA recipe is NF4 with double quantization (the quantization constants quantized
    too, about 0.4 bits per weight saved). bitsandbytes 0.50 also runs this on a CPU.

    `storage_dtype` (QLoRA with FSDP: `run.quant_storage`, the compute dtype): the packed 4-bit
    weights are stored in tensors of that dtype (`bnb_4bit_quant_storage`) instead of uint8, so
    that FSDP can shard them like the model's other floating-point weights: it flattens a
    block's parameters into one buffer of one dtype, and accelerate leaves uint8 4-bit weights
    out of the sharding (each process would then hold all of them). None: uint8.

    The notebooks load the model in the compute dtype (`dtype=`), so storage, load dtype and
    compute dtype are one, as the published FSDP-QLoRA recipes have them (the bitsandbytes
    FSDP-QLoRA guide, PEFT's `fsdp_config_qlora.yaml` with `run_peft_qlora_fsdp.sh`, answer.ai's
    fsdp_qlora): bf16 by default in all three. So a storage dtype other than the compute dtype,
    or fp16, is refused: none of them stores the 4-bit weights in fp16 (PEFT's guide and
    answer.ai's fp16 mode keep them in fp32). On a GPU, bf16 must be native (an A100, L4 or H100;
    a T4 only emulates it, several times slower): a T4 trains 13B QLoRA on one GPU instead
    (`instruction_tune/llama2_13b_qlora`). On a CPU (the smoke runs) everything is fp32.
    """
    import torch
    from transformers import BitsAndBytesConfig

    if quant_type not in QUANT_TYPES:
        raise ValueError(f"bnb_4bit_quant_type must be one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
    compute_dtype = compute_dtype or torch.float32
    storage = {}
    if storage_dtype is not None:
        from nbutils.run import runtime

        if storage_dtype != compute_dtype or compute_dtype == torch.float16 or (
                torch.cuda.is_available() and not (compute_dtype == torch.bfloat16 and runtime.native_bf16())):
            device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "this CPU"
            raise ValueError(
                f"QLoRA under FSDP (load_in_4bit with distributed: fsdp) stores, loads and computes in bf16 "
                f"on a GPU with native bf16 (A100, L4, H100), as the published FSDP-QLoRA recipes do; here "
                f"precision gives {str(compute_dtype).replace('torch.', '')} (storage "
                f"{str(storage_dtype).replace('torch.', '')}) on {device}. Set precision: bf16 on such a "
                f"GPU; on a T4 train on one GPU instead (instruction_tune/llama2_13b_qlora: 13B QLoRA "
                f"fits one 15 GB T4)")
        storage = {"bnb_4bit_quant_storage": storage_dtype}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype, **storage)


FINETUNING = ("lora", "full")


def check_finetuning(finetuning: str, load_in_4bit: bool) -> str:
    """`finetuning` itself if it names a mode this notebook can run; else an error naming the
    parameter. full trains every weight, which 4-bit (frozen, quantized) weights cannot."""
    if finetuning not in FINETUNING:
        raise ValueError(f"finetuning must be 'lora' (an adapter on frozen weights) or 'full' "
                         f"(every weight trains), got {finetuning!r}")
    if finetuning == "full" and load_in_4bit:
        raise ValueError("finetuning='full' trains every weight, and 4-bit weights cannot be trained: "
                         "set load_in_4bit: false (or finetuning: lora for QLoRA)")
    return finetuning


def keep_4bit_training_layout(model) -> int:
    """On a CPU, stop bitsandbytes from repacking 4-bit weights for inference; returns how many
    layers were told.

    bitsandbytes 0.50, on a CPU with AVX512-BF16, repacks a 4-bit layer's weights in place the
    first time it runs in eval mode without gradients (evaluating before training does that).
    Training afterwards goes through an op without an autograd kernel (PyTorch warns of
    "silently incorrect behavior") and learns far slower; layers narrower than the 64-value
    quantization block (the tiny test models) fail outright. The training layout works for both.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def trainable_to_float32(model) -> int:
    """Cast the trainable parameters (adapters, `modules_to_save`) to fp32; returns how many.

    TRL's SFTTrainer casts them to bf16 for a quantized model (the QLoRA paper's choice), which
    is right when the model computes in bf16. Where it computes in fp32 (a CPU) a bf16 head in
    `modules_to_save` fails with a dtype mismatch, and fp16 mixed precision (a T4) wants fp32
    master weights: call this after building the trainer, before `train()`.
    """
    import torch

    count = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            count += 1
    return count


def merge_adapter_and_save(base_model: str, adapter_dir: str | Path, out_dir: str | Path,
                           tokenizer, dtype=None, trust_remote_code: bool = False,
                           token: str | None = None) -> Path:
    """Load the base model in full (not 4-bit) precision, apply the saved adapter, merge it into
    the weights and save a standalone model (safetensors) with the tokenizer. `token`: the hub
    token a gated base checkpoint needs (never printed).

    Merging into 4-bit weights would round the update away, so the base is reloaded unquantized.
    If the tokenizer gained tokens (a pad token), the base's embeddings are resized first; the
    adapter carries the resized embedding rows (PEFT saves them when it sees the resize).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code, token=token)
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# --- Generic: checking target modules against the model, adding the adapter, counting parameters

# Layer types PEFT's LoRA can wrap (bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear).
_LORA_LAYER_TYPES = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention")


def _lora_layer_paths(model) -> list[str]:
    """Full module paths of the layers LoRA can wrap (matched by class name through the MRO,
    so transformers' Conv1D and bitsandbytes' 4-bit layers count without importing them)."""
    return [name for name, module in model.named_modules()
            if name and {cls.__name__ for cls in type(module).__mro__} & set(_LORA_LAYER_TYPES)]


def lora_module_names(model) -> list[str]:
    """Short names (the last part of the module path, as `target_modules` uses them) of the
    layers in `model` that LoRA can wrap: e.g. q, k, v, o, wi_0, wi_1, wo, lm_head for T5."""
    return sorted({path.rsplit(".", 1)[-1] for path in _lora_layer_paths(model)})


def check_target_modules(model, target_modules, param: str = "lora_target_modules"):
    """Return `target_modules` as `LoraConfig` takes it ("all-linear" or a list of names), after
    checking that each name matches a layer of `model` that LoRA can wrap.

    PEFT matches a name against the end of each module path (`q` matches
    `encoder.block.0.layer.0.SelfAttention.q`); a name that matches nothing would otherwise fail
    deep inside `get_peft_model`, or, next to a valid name, be ignored silently.
    """
    from difflib import get_close_matches

    try:
        resolved = _target_modules(target_modules)
    except ValueError as err:
        raise ValueError(str(err).replace("lora_target_modules", param, 1)) from None
    if resolved == "all-linear":
        return resolved
    if "all-linear" in resolved:
        raise ValueError(f"{param}: 'all-linear' selects every linear layer and cannot be combined "
                         f"with other names; got {list(resolved)}")
    lora_paths = _lora_layer_paths(model)
    candidates = lora_module_names(model)
    for target in resolved:
        if not any(path == target or path.endswith("." + target) for path in lora_paths):
            close = get_close_matches(target, candidates, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{param}: {target!r} is not a layer of {type(model).__name__} that LoRA "
                             f"can adapt{hint}; its layers: {', '.join(candidates)} "
                             "(or ['all-linear'] for every linear layer but the output head)")
    return resolved


def seq2seq_lora_config(r: int, alpha: float, dropout: float, target_modules):
    """A `peft.LoraConfig` for an encoder-decoder model (task SEQ_2_SEQ_LM, no bias training)."""
    return _lora_config("SEQ_2_SEQ_LM", r, alpha, dropout, target_modules)


def classification_lora_config(r: int, alpha: float, dropout: float, target_modules):
    """A `peft.LoraConfig` for a sequence classifier (task SEQ_CLS, no bias training): PEFT
    trains and saves the fresh classification head in full beside the adapters."""
    return _lora_config("SEQ_CLS", r, alpha, dropout, target_modules)


def add_lora(model, config, quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap `model` in a PEFT model with a fresh LoRA adapter (only the adapter trains).

    A 4-bit model is first prepared for k-bit training (layer norms in fp32, input gradients
    enabled), as QLoRA does. A new adapter's B matrices start at zero, so the wrapped model
    computes exactly what the base model does until training moves them.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return get_peft_model(model, config)
