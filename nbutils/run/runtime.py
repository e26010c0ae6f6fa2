"""What the notebook runs on: the hardware, the training precision that follows from it, and
the process topology of a multi-process run (which process this is, how many there are)."""

from __future__ import annotations

import os
from dataclasses import dataclass

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Model families (config `model_type`) whose activations overflow fp16's range (65,504), so
# training in fp16 gives inf/NaN losses; they were pretrained in bf16.
# - T5 and its variants: FLAN-T5's feed-forward activations exceed fp16 (NaN losses; the
#   transformers T5 code clamps inf values in fp16 for this reason).
# - Qwen2 and its successors: the Qwen maintainers answer fp16 NaN reports with "bfloat16 is
#   the preferred data type ... changing to float16 may cause numerical instabilities" and
#   advise bf16 or fp32 (github.com/QwenLM/Qwen3 issues 670 and 868, Qwen2-7B-Instruct and
#   Qwen2-1.5B-Instruct in fp16 on V100s, 2024).
FP16_UNSAFE_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5", "qwen2", "qwen2_moe", "qwen3",
                                     "qwen3_moe"})


def model_fp16_safe(model_type: str | None) -> bool:
    """Whether a model of this `model_type` (its config's) can train in fp16; unknown: True."""
    return (model_type or "").lower() not in FP16_UNSAFE_MODEL_TYPES


def model_type_of(name_or_path: str, token=None, trust_remote_code: bool = False) -> str | None:
    """The `model_type` of a checkpoint's config (read only the config), or None if it cannot
    be read (then the precision choice assumes nothing about the model)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, token=token,
                                          trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError):
        return None


def native_bf16() -> bool:
    """bf16 in hardware (compute capability 8.0+: A100, H100, L4, RTX 30xx). A T4 (7.5) or V100
    only emulates it: `torch.cuda.is_bf16_supported()` says True there, and training runs in
    software bf16 without tensor cores, several times slower than fp16."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def compute_dtype(flags: dict[str, bool]):
    """The torch dtype matching Trainer precision flags: the dtype to load 16-bit weights in and
    the 4-bit (bitsandbytes) compute dtype, so that quantized layers compute in what the
    Trainer's autocast uses."""
    import torch

    return torch.bfloat16 if flags.get("bf16") else torch.float16 if flags.get("fp16") else torch.float32


def training_precision(requested: str = "auto", fp16_safe: bool | None = None,
                       model_type: str | None = None) -> dict[str, bool]:
    """Trainer flags `{"bf16": ..., "fp16": ...}` for `requested` on this machine.

    "auto": bf16 where the GPU has it natively (not emulated), else fp16 if the model tolerates
    it, else fp32; always fp32 on a CPU. Whether the model tolerates fp16: `fp16_safe` if
    given, else from `model_type` (`FP16_UNSAFE_MODEL_TYPES`), else assumed.
    """
    import torch

    if fp16_safe is None:
        fp16_safe = model_fp16_safe(model_type)
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp16" and not fp16_safe:
        raise ValueError(f"precision='fp16': this model ({model_type or 'T5'}) overflows in fp16 "
                         "(NaN losses); use 'auto', 'fp32' or 'bf16'")
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if not cuda:
            requested = "fp32"
        elif native_bf16():
            requested = "bf16"
        else:
            requested = "fp16" if fp16_safe else "fp32"
    if requested in ("bf16", "fp16") and not cuda:
        raise ValueError(f"precision={requested!r} needs a CUDA GPU; use 'fp32' or 'auto' on a CPU")
    return {"bf16": requested == "bf16", "fp16": requested == "fp16"}


def describe_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU ({torch.get_num_threads()} threads)"


def device_map():
    """`device_map` for `from_pretrained` of a model that is trained here.

    One process with GPUs: "auto" (a model too big for one GPU is spread over all of them).
    Several processes (DDP, `num_processes` > 1 or `accelerate launch`): each loads its whole
    copy on its own GPU, `{"": local_rank}`; a model spread with "auto" cannot be trained with
    DDP. On a CPU: None (the Trainer places the model).
    """
    import torch

    if not torch.cuda.is_available():
        return None
    if processes() > 1:
        return {"": local_rank()}
    return "auto"


# The process topology. `accelerate launch`, torchrun and `launch.run_in_processes` set these
# variables in every process they start; a plain notebook or script has none of them.


@dataclass(frozen=True)
class Topology:
    processes: int  # all training processes, on all machines (WORLD_SIZE)
    rank: int  # this process among them (RANK); 0 writes the files
    local_rank: int  # this process on its machine (LOCAL_RANK): its GPU
    processes_per_machine: int  # LOCAL_WORLD_SIZE
    machines: int  # number of machines (nodes) taking part; see `topology`

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(environ, name: str, default: int) -> int:
    value = environ.get(name) or ""
    if not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be a whole number "
                         "(the launcher of a multi-process run sets it)") from None


def topology(environ=None) -> Topology:
    """Processes, ranks and machines of this run, from the variables the launcher sets.

    Machines: GROUP_WORLD_SIZE where the launcher sets it. torchrun (and `accelerate launch`,
    which runs torchrun's launcher) starts one agent per machine and sets GROUP_WORLD_SIZE to
    the number of agents, which is the number of machines even when they run different numbers
    of processes. Elsewhere (a launcher that sets only WORLD_SIZE and LOCAL_WORLD_SIZE, such as
    an srun script) WORLD_SIZE / LOCAL_WORLD_SIZE, which assumes the same number of processes
    on each machine. Without any of them: one process on one machine.
    """
    environ = os.environ if environ is None else environ
    count = _env_int(environ, "WORLD_SIZE", 1)
    local = _env_int(environ, "LOCAL_WORLD_SIZE", count)
    machines = _env_int(environ, "GROUP_WORLD_SIZE", 0) or max(1, count // max(local, 1))
    return Topology(processes=count, rank=_env_int(environ, "RANK", 0),
                    local_rank=_env_int(environ, "LOCAL_RANK", 0),
                    processes_per_machine=local, machines=machines)


def processes() -> int:
    """How many training processes this run has (WORLD_SIZE; 1 outside a launched run)."""
    return topology().processes


def rank() -> int:
    """This process's number among all of them (RANK; 0 outside a launched run)."""
    return topology().rank


def local_rank() -> int:
    """This process's number on its own machine, i.e. its GPU (LOCAL_RANK; 0 outside one)."""
    return topology().local_rank


def is_main_process() -> bool:
    """False in the secondary processes of a multi-process run: only the main one writes files
    and draws plots."""
    return rank() == 0
