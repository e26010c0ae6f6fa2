"""What hardware the notebook runs on, and the training precision that follows from it."""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def training_precision(requested: str = "auto", fp16_safe: bool = True) -> dict[str, bool]:
    """Trainer flags `{"bf16": ..., "fp16": ...}` for `requested` on this machine.

    "auto": bf16 where the GPU supports it, else fp16 if the model tolerates it (`fp16_safe`;
    FLAN-T5 overflows in fp16), else fp32; always fp32 on a CPU.
    """
    import torch

    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp16" and not fp16_safe:
        raise ValueError("precision='fp16': this model overflows in fp16 (FLAN-T5 gives NaN losses); "
                         "use 'auto', 'fp32' or 'bf16'")
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if not cuda:
            requested = "fp32"
        elif torch.cuda.is_bf16_supported():
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
    import os

    import torch

    if not torch.cuda.is_available():
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return "auto"
