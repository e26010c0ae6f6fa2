"""Training in several processes: data parallel (DDP) or sharded (FSDP2), on one or more machines.

- `ddp` (the default): every process holds a whole copy of the model, its gradients and its
  optimizer state, and trains on its share of each batch; gradients are averaged. It needs the
  model to fit one device, and is what `num_processes` / `NPROC` did before this module.
- `fsdp`: PyTorch's Fully Sharded Data Parallel, version 2 (`torch.distributed.fsdp.fully_shard`,
  through accelerate and the Trainer). Each transformer block becomes one unit whose parameters,
  gradients and optimizer state are split across the processes: each process holds about
  1/n of them and gathers a block's full weights only while computing it. For models that do
  not fit one device (full fine-tuning of a 7B model, QLoRA of 13B-70B ones).

`training_arguments(distributed, model)` returns the `TrainingArguments` keywords for a
strategy; `save_pretrained` writes a consolidated model (or PEFT adapter) that loads without
FSDP; `summary` is the record's `train.distributed` section. Checkpoints during training are
sharded (one file per process, `torch.distributed.checkpoint`), so saving a 13B model does not
gather it in one process's memory, and they resume with the same number of processes.

The launch environment (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_WORLD_SIZE), set
by torchrun, `accelerate launch` or `accelerate.notebook_launcher`, is read in one place:
`nbutils.run.runtime.topology`.
"""

from __future__ import annotations

import os
from pathlib import Path

from nbutils.run import runtime

STRATEGIES = ("ddp", "fsdp")
# The run record's `train.distributed` section (`summary`).
RECORD_FIELDS = ("strategy", "processes", "machines", "model_state_bytes_per_process")
PARAMETER = "distributed"  # the notebooks' parameter name, used in messages


def check_strategy(distributed: str) -> str:
    """`distributed` itself if it names a strategy; else an error naming the parameter."""
    if distributed not in STRATEGIES:
        raise ValueError(f"{PARAMETER} must be one of {', '.join(repr(s) for s in STRATEGIES)} "
                         f"(ddp: a whole model per process; fsdp: the model sharded across the "
                         f"processes), got {distributed!r}")
    return distributed


def _unwrap(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _class_name(module) -> str:
    """The module's own class name; FSDP2 renames a sharded module's class FSDP<name>."""
    for cls in type(module).__mro__:  # FSDP<name>, FSDPModule, <name>, ...
        if not cls.__name__.startswith("FSDP"):
            return cls.__name__
    return type(module).__name__


def block_classes(model) -> list[str]:
    """Names of the model's transformer block classes, the units FSDP shards and gathers one
    at a time (`transformer_layer_cls_to_wrap`), in the order first met: the class of each list
    of blocks in the model (a `ModuleList` of modules of one class that hold parameters; T5's
    encoder and decoder blocks are one class). A PEFT model is looked into. A model with no such
    list is an error: wrapping the whole model as one unit would gather all its weights at once,
    which is no sharding.

    (transformers' own list of a model's blocks, `_no_split_modules`, is private; accelerate
    wraps from it when given no classes, but it also names modules that hold the input
    embeddings, BERT's and RoBERTa's *Embeddings, which accelerate shards on their own:
    `fully_shard` refuses a parameter sharded twice.)
    """
    import torch

    inner = _unwrap(model)
    found = []
    for module in inner.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            kinds = {_class_name(block) for block in module}
            name = _class_name(module[0])
            if len(kinds) == 1 and name not in found and any(True for _ in module[0].parameters()):
                found.append(name)
    if not found:
        raise ValueError(f"{PARAMETER}='fsdp': cannot find the transformer blocks of "
                         f"{_class_name(inner)} to shard (no list of blocks); use distributed='ddp'")
    return found


def training_arguments(distributed: str, model, activation_checkpointing: bool = False,
                       processes: int | None = None) -> dict:
    """`TrainingArguments` (or `SFTConfig`, `Seq2SeqTrainingArguments`) keywords for a strategy.

    ddp: none (the Trainer's default in a multi-process run). fsdp, in a run of more than one
    process: FSDP2 (`fsdp_config["version"] = 2`; version 1 refuses a machine without an
    accelerator and is deprecated in transformers 5) with
    - `reshard_after_forward`: full sharding (FSDP1's `full_shard`): a block's gathered weights
      are freed after its forward and gathered again for its backward;
    - each transformer block its own unit (`transformer_layer_cls_to_wrap`, `block_classes`);
    - `SHARDED_STATE_DICT`: checkpoints are written by every process, its own shard, and
      resumed the same way (a full state dict would gather the model in one process to save);
    - activation checkpointing by FSDP itself when asked for (`activation_checkpointing`
      moves from the Trainer's argument into `fsdp_config`: the Trainer's own would add an
      all-gather per block in the backward pass).
    `fsdp=True`: transformers 5 deprecates the string form ("full_shard auto_wrap"); the
    sharding is set in `fsdp_config` instead. With one process there is nothing to shard (the
    Trainer refuses FSDP outside a distributed run): no keywords.
    """
    check_strategy(distributed)
    processes = runtime.topology().processes if processes is None else processes
    if distributed == "ddp" or processes < 2:
        return {}
    config = {
        "version": 2,
        "reshard_after_forward": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": block_classes(model),
        "state_dict_type": "SHARDED_STATE_DICT",
        "cpu_ram_efficient_loading": False,
        "activation_checkpointing": bool(activation_checkpointing),
    }
    return {"fsdp": True, "fsdp_config": config, "activation_checkpointing": False}


def apply(trainer):
    """Make sure `trainer` runs the strategy its arguments ask for, and prepare FSDP's run;
    returns it. Every process must call it, right after creating the Trainer and before training.

    It makes the Trainer take the model's loss for what it is (`match_loss_to_model`), whatever
    the strategy. Where FSDP was asked for (`fsdp` arguments), the Trainer must be running it:
    accelerate (1.15) turns FSDP on for accelerator devices (CUDA, XPU, NPU, ...) only, and on
    CPUs a Trainer given `fsdp` arguments would silently train with DDP, every process holding the
    whole model; that is an error here, not a silent DDP run. With FSDP on, whoever turned it on:
    a weight several modules share stays whole in every process (`keep_tied_weights_whole`),
    every process starts from the main process's weights (`broadcast_from_main`), and a run that
    loads its best checkpoint at the end makes each checkpoint's folder as soon as it is decided
    (`checkpoint_folder_first`).
    """
    args = trainer.args
    match_loss_to_model(trainer)
    if not getattr(args, "fsdp", None):
        return trainer
    if not getattr(trainer, "is_fsdp_enabled", False):
        raise RuntimeError(f"{PARAMETER}='fsdp' was asked for, but the Trainer's accelerator runs "
                           f"{trainer.accelerator.state.distributed_type}: the model would not be sharded "
                           f"(accelerate runs FSDP on accelerator devices only: GPUs, not CPUs); "
                           f"use {PARAMETER}='ddp'")
    keep_tied_weights_whole(trainer)
    broadcast_from_main(trainer.model)
    if args.load_best_model_at_end:
        trainer.add_callback(checkpoint_folder_first())
    return trainer


def checkpoint_folder_first():
    """A callback that makes a checkpoint's folder as soon as the Trainer decides to save it.

    transformers (5.24) records the best checkpoint only if its folder exists when every process
    has saved the model (`_save_checkpoint`: a barrier, then `os.path.exists` in each process).
    Under FSDP with sharded checkpoints `save_model` writes nothing; the folder appears later,
    when the first process writes its optimizer shard. So each process decided by a race: one
    kept an older best, or none, while another recorded the new one. Then the main process's
    checkpoint rotation deleted the best another process would load (`AssertionError: metadata is
    None ... checkpoint-32`, 1 run in 5), or one process loaded the best model at the end (a
    collective) while the other went on to the next one (a hang), or both loaded an older
    checkpoint than the best (3 of 3 smoke runs). Made when the save is decided, before that
    barrier, the folder is there for every process."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class CheckpointFolderFirst(TrainerCallback):
        def _make(self, args, state, control):
            if control.should_save:
                os.makedirs(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"),
                            exist_ok=True)

        def on_step_end(self, args, state, control, **kwargs):
            self._make(args, state, control)

        def on_epoch_end(self, args, state, control, **kwargs):
            self._make(args, state, control)

    return CheckpointFolderFirst()


def loss_divides_by_item_count(model) -> bool:
    """Whether `model`'s own loss divides a sum by the Trainer's `num_items_in_batch` (the
    label count of the whole step, all processes and accumulated batches), as the Trainer
    assumes of every model whose `forward` takes `**kwargs`.

    transformers' models that do compute their loss with `self.loss_function(..., **kwargs)`
    (causal LMs: a sum over tokens divided by that count). BERT's classification head and T5's
    LM head (transformers 5.24) take the kwargs but compute a plain `CrossEntropyLoss()` mean of
    their own batch. A model class's own `accepts_loss_kwargs` (transformers' per-model switch)
    is taken as it says. A PEFT model is looked into."""
    import inspect

    inner = _unwrap(model)
    declared = getattr(inner, "accepts_loss_kwargs", None)
    if declared is not None:
        return bool(declared)
    try:
        source = inspect.getsource(type(inner).forward)
    except (OSError, TypeError):
        return True  # unknown: the Trainer's own assumption stands
    return "loss_function(" in source


def match_loss_to_model(trainer) -> bool:
    """Tell the Trainer not to count on a loss the model does not compute; returns whether it
    was changed.

    transformers (5.24) decides that a model divides its loss by the step's label count when its
    `forward` takes `**kwargs`; it then multiplies the loss by the number of processes
    (`average_tokens_across_devices`, on by default) and no longer divides it by the gradient
    accumulation steps. For a model that returns a plain per-batch mean (BERT's classification
    head, T5: `loss_divides_by_item_count`) the loss, and so the gradients, came out times the
    number of processes (1.387 instead of ln 2 = 0.693 at the start of the two-process detection
    run) and times the accumulation steps. Such a model is then taken as not accepting loss
    kwargs, the Trainer's own setting (`model_accepts_loss_kwargs`) for a model whose loss it
    must average itself; a `compute_loss_func` (which receives the count) is left to it."""
    if getattr(trainer, "compute_loss_func", None) is not None or not getattr(trainer, "model_accepts_loss_kwargs", False):
        return False
    if loss_divides_by_item_count(trainer.model):
        return False
    trainer.model_accepts_loss_kwargs = False
    return True


def tied_modules(model) -> dict[str, list[str]]:
    """{parameter name: the modules holding it} for each parameter held by several modules
    other than the one pair accelerate shards together (the input embeddings and a tied output
    layer). T5's `shared` embedding is also its encoder's and decoder's `embed_tokens` (and its
    output layer's weight where tied): three or four modules, one tensor."""
    inner = _unwrap(model)
    get_in = getattr(inner, "get_input_embeddings", None)
    get_out = getattr(inner, "get_output_embeddings", None)
    pair = {id(m) for m in (get_in() if callable(get_in) else None, get_out() if callable(get_out) else None)
            if m is not None}
    owners: dict[int, list[tuple[str, object]]] = {}
    names: dict[int, str] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, param in module.named_parameters(recurse=False):
            if param is None:
                continue
            names.setdefault(id(param), f"{module_name}.{name}" if module_name else name)
            if all(m is not module for _, m in owners.get(id(param), [])):
                owners.setdefault(id(param), []).append((module_name, module))
    tied = {}
    for key, held_by in owners.items():
        if len(held_by) > 1 and {id(m) for _, m in held_by} != pair:
            tied[names[key]] = [n for n, _ in held_by]
    return tied


def keep_tied_weights_whole(trainer) -> list[str]:
    """Leave a weight tied across several modules out of FSDP's sharding: every process keeps
    it whole (as it keeps buffers); returns the modules left out.

    FSDP2 shards a tensor in one unit only and refuses one that several units reach
    ("shared with a parameter already managed by another FSDP group"); accelerate groups the
    input embeddings with a tied output layer, but not T5's embedding, which its encoder and
    decoder hold as modules of their own. A frozen weight (LoRA's base weights) needs no
    gradient exchange, so keeping it whole costs only its memory (FLAN-T5-large: the 33M
    parameters of its embedding, 4% of the model). A tied weight that trains is an error:
    each process would update its own copy."""
    model = trainer.model
    tied = tied_modules(model)
    if not tied:
        return []
    module_names = sorted({n for held_by in tied.values() for n in held_by})
    modules = dict(model.named_modules(remove_duplicate=False))
    trainable = sorted({f"{n}.{p}" for n in module_names for p, t in modules[n].named_parameters() if t.requires_grad})
    if trainable:
        raise ValueError(f"{PARAMETER}='fsdp' cannot shard a weight that several modules share and that "
                         f"trains ({', '.join(trainable)}); use {PARAMETER}='ddp'")
    for name in module_names:  # FSDP leaves them where they are: put them beside the shards
        modules[name].to(trainer.args.device)
    plugin = trainer.accelerator.state.fsdp_plugin
    plugin.ignored_modules = [*(plugin.ignored_modules or []), *(modules[n] for n in module_names)]
    return module_names


def prepare_for_evaluation(trainer):
    """Shard the model now, so the Trainer can evaluate or predict before it trains; returns it.

    FSDP2 shards a model and switches its optimizer over to the shards in one step, so
    accelerate (1.15) prepares a model only together with its optimizer; the Trainer's
    `evaluate()` / `predict()` before `train()` asks for the model alone and stops ("a model and
    optimizer must be passed together"). Here the Trainer's own optimizer is created first
    (`create_optimizer`, as `train()` would) and both are prepared; the model stays sharded
    (never gathered whole in one process), `train()` then finds both prepared (accelerate leaves
    an FSDP module and a prepared optimizer as they are), and evaluation uses the Trainer's own
    path (its generation too: `generate` gathers the blocks as `forward` does). Under ddp, in one
    process or once prepared, nothing. Every process must call it, after `apply`.
    """
    if not getattr(trainer, "is_fsdp_enabled", False) or is_sharded(trainer.model):
        return trainer
    from torch.distributed.fsdp import register_fsdp_forward_method

    trainer.create_optimizer()
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model = trainer.model_wrapped = model  # as train() does under FSDP
    if hasattr(model, "generate"):  # as train() does: generate() gathers the blocks like forward()
        register_fsdp_forward_method(model, "generate")
    return trainer


def _group_size() -> int:
    """Processes in this process's torch.distributed group (1 where none is initialised)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_from_main(model) -> int:
    """Give every process the main process's parameters and buffers (in place); returns how
    many tensors were sent.

    DDP does this when it wraps a model; FSDP2 does not: each process keeps its own shard of
    its own copy. Weights created at random in each process (a LoRA adapter, a new task head)
    would then make a model that is no process's: half of one initialisation, half of another.
    """
    import torch
    import torch.distributed as dist

    if _group_size() < 2:
        return 0
    tensors = [t for t in model.state_dict(keep_vars=True).values() if isinstance(t, torch.Tensor)]
    seen, sent = set(), 0
    with torch.no_grad():
        for tensor in tensors:
            data = tensor.detach()  # the same storage: the broadcast writes into the model
            if data.numel() == 0:
                continue
            key = (data.untyped_storage().data_ptr(), data.storage_offset(), tuple(data.shape))
            if key in seen:  # a tied weight: once
                continue
            seen.add(key)
            dist.broadcast(data, src=0)
            sent += 1
    return sent


def strategy_in_use(distributed: str, processes: int | None = None) -> str:
    """What actually ran: `distributed`, or "single" for a one-process run (neither applies)."""
    check_strategy(distributed)
    processes = runtime.topology().processes if processes is None else processes
    return distributed if processes > 1 else "single"


# ----------------------------------------------------------------------------------------------
# What each process holds


def _local(tensor):
    """The part of `tensor` this process stores: a DTensor's local shard, else the tensor."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def model_state_bytes(model) -> int:
    """Bytes of parameters and buffers this process holds (the local shard of a sharded one;
    a tensor shared by two names, such as tied embeddings, counted once)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        local = _local(tensor.data if hasattr(tensor, "data") else tensor)
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), local.numel()) if local.numel() else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        total += local.numel() * local.element_size()
    return int(total)


def shard_fractions(model) -> dict[str, float]:
    """{parameter name: local elements / all elements} of every sharded (DTensor) parameter."""
    fractions = {}
    for name, param in model.named_parameters():
        if callable(getattr(param, "to_local", None)) and param.numel():
            fractions[name] = param.to_local().numel() / param.numel()
    return fractions


def reshard(model) -> None:
    """Free the gathered weights of every FSDP unit of `model` (its resting, sharded state).

    A unit that does not reshard after its forward (the root, whose weights the backward needs
    first) keeps its weights gathered after an evaluation; counted then, it would look whole."""
    for module in _fsdp_units(model):
        module.reshard()


def process_state(model) -> dict:
    """What this process holds at rest: model-state bytes, and how its sharded parameters are
    split."""
    reshard(model)
    fractions = shard_fractions(model)
    values = list(fractions.values())
    return {"model_state_bytes": model_state_bytes(model),
            "parameters": sum(1 for _ in model.parameters()),
            "sharded_parameters": len(values),
            "shard_fraction_min": round(min(values), 6) if values else None,
            "shard_fraction_max": round(max(values), 6) if values else None}


def _gather(value) -> list:
    """`value` from every process, in rank order (a collective: every process must call it)."""
    import torch.distributed as dist

    if _group_size() < 2:
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def summary(model, distributed: str) -> dict:
    """The record's `train.distributed` section (every process must call it: it gathers what
    each holds): strategy, processes, machines, model-state bytes per process, and per process
    how many parameters are sharded and the smallest and largest share of one it holds."""
    launch = runtime.topology()
    states = _gather(process_state(model))
    return {"strategy": strategy_in_use(distributed, launch.processes),
            "processes": launch.processes, "machines": launch.machines,
            "model_state_bytes_per_process": [s["model_state_bytes"] for s in states],
            "per_process": states}


# ----------------------------------------------------------------------------------------------
# Saving


def _fsdp_units(model) -> list:
    """The modules of `model` that FSDP2 has made units of its own (`FSDPModule`s)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model) -> bool:
    """Whether FSDP2 has sharded `model` (a module of it is an `FSDPModule`)."""
    return bool(_fsdp_units(model))


def full_state_dict(model) -> dict:
    """The whole, unsharded state dict of a sharded model, on the CPU of the main process (an
    empty dict elsewhere). A collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_pretrained(model, folder: str | Path, tokenizer=None, **kwargs) -> Path | None:
    """`model.save_pretrained(folder, **kwargs)` (safetensors), consolidated and written by the
    main process only: a sharded (FSDP) model is gathered first, so the folder loads with
    `from_pretrained` (or `PeftModel.from_pretrained` for an adapter) without FSDP. Every
    process must call it. Returns the folder in the main process, None elsewhere."""
    state_dict = full_state_dict(model) if is_sharded(model) else None
    folder = Path(folder)
    if runtime.topology().is_main:
        if state_dict is not None:
            kwargs["state_dict"] = state_dict
        model.save_pretrained(folder, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    _barrier()  # no process reads the folder before it is whole
    return folder if runtime.topology().is_main else None


def _barrier() -> None:
    import torch.distributed as dist

    if _group_size() > 1:
        dist.barrier()


def save_model(trainer, folder: str | Path) -> Path | None:
    """`trainer.save_model(folder)`, also under FSDP with sharded checkpoints (where the Trainer
    writes no weights): the consolidated model and the trainer's tokenizer, from the main
    process. Every process must call it."""
    if not is_sharded(trainer.model):
        trainer.save_model(str(folder))
        _barrier()
        return Path(folder) if runtime.topology().is_main else None
    model = trainer.accelerator.unwrap_model(trainer.model)
    return save_pretrained(model, folder, tokenizer=trainer.processing_class)


def describe(distributed: str, model=None) -> str:
    """One line for the notebook: the strategy, processes, machines (and FSDP's units)."""
    launch = runtime.topology()
    used = strategy_in_use(distributed, launch.processes)
    text = f"{used}: {launch.processes} process(es) on {launch.machines} machine(s)"
    if used == "fsdp" and model is not None:
        text += f"; each {', '.join(block_classes(model))} sharded across the processes"
    return text


def prepare(trainer):
    """The notebook's one multi-process call, right after creating the Trainer, in every
    process: the strategy its arguments ask for (`apply`), and under FSDP the model sharded now
    (`prepare_for_evaluation`), so it can be scored before training too. With one process it
    only makes the Trainer take the model's loss for what it is. Returns the Trainer."""
    apply(trainer)
    prepare_for_evaluation(trainer)
    if runtime.topology().processes > 1 and runtime.is_main_process():
        print(describe("fsdp" if getattr(trainer, "is_fsdp_enabled", False) else "ddp", trainer.model))
    return trainer
