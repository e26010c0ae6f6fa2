"""Quiet, readable notebook output: known noise filtered where it is logged, progress bars
that read well live and in stored notebooks.

    from nbutils.run import quiet
    quiet.install()  # first thing in the setup cell, before transformers is imported

Each filter matches one known message exactly, on the logger that emits it; every other
warning of those loggers still shows:

- bitsandbytes on a CPU with AVX512-BF16 tries to fetch an optional faster 4-bit kernel from
  the hub (`Failed to load CPU gemm_4bit_forward from kernels-community ...`) and falls back to
  its own, which is what runs here anyway;
- transformers' LOAD REPORT table when a pre-trained encoder gets a fresh task head: the new
  head's weights are "missing" and the pre-training head's "unexpected", which is what
  fine-tuning means. The table is replaced by one line saying so, printed (stdout) rather than
  logged. A report naming any other weight (a wrong checkpoint, a size mismatch) is left whole;
- the Trainer's `mtime may not be reliable on this filesystem`: checkpoints saved within one
  second of each other (tiny models) are ordered by step number instead, which is right;
- the Trainer's `There were missing keys in the checkpoint model loaded: [...]` when it loads
  the best checkpoint back and the keys are only the copies of a tied embedding (T5's
  `encoder.embed_tokens`, `decoder.embed_tokens`, a tied `lm_head`): `save_pretrained` stores a
  tied tensor once (`shared.weight`), and loading that sets every copy (they are one tensor).
  transformers 5.24 silences the message only for `_keys_to_ignore_on_save`, which T5 leaves
  empty. Any other missing key is still reported;
- the FutureWarning that `is_gradient_checkpointing` is deprecated: PEFT 0.21's
  `get_peft_model` and TRL read that transformers property (not our code, and nothing a reader
  can change); it is a `warnings` message, filtered by its text and category only.

Progress bars: in JupyterLab tqdm draws widgets, which are live and fine. A notebook executed
headless (the runner sets `NBUTILS_HEADLESS=1`) would store each widget frozen at its first
state (`Loading weights: 0%| | 0/37`), so there every bar writes one plain line when it
finishes instead (`Loading weights: 100%|...| 37/37 [00:00<00:00]`). `TQDM_DISABLE=1` still
turns them all off.
"""

from __future__ import annotations

import logging
import os
import re

HEADLESS_VARIABLE = "NBUTILS_HEADLESS"

BITSANDBYTES_KERNEL = "Failed to load CPU gemm_4bit_forward from kernels-community"
MTIME = "mtime may not be reliable on this filesystem"
LOAD_REPORT = "LOAD REPORT"
MISSING_KEYS = "There were missing keys in the checkpoint model loaded: "
# The copies of a tied input embedding (a PEFT model's keys carry base_model.model.).
TIED_COPIES = re.compile(r"^(?:base_model\.model\.)?(?:encoder\.embed_tokens|decoder\.embed_tokens|lm_head)\.weight$")

# Weights of a task head that from_pretrained initialises fresh on a pre-trained encoder, and
# those of the pre-training head it leaves out (BERT, RoBERTa, DistilBERT, DeBERTa-v2, T5, Llama).
FRESH_HEAD = re.compile(r"^(?:[a-z_]+\.)?(?:classifier|pre_classifier|score|qa_outputs|pooler)\.")
PRETRAINING_HEAD = re.compile(r"^(?:[a-z_]+\.)?(?:cls|lm_head|lm_predictions|vocab_transform|vocab_layer_norm|"
                              r"vocab_projector|mask_predictions|pooler)\.")
_ROW = re.compile(r"^(\S+)\s+\|\s+([A-Z_]+)\s+\|")


def fresh_head_summary(report: str) -> str | None:
    """One line for a LOAD REPORT that only says "a new task head was initialised", or None
    where it names anything else (then the whole report must be seen)."""
    rows = [m.groups() for line in report.splitlines() if (m := _ROW.match(line.strip()))]
    rows = [(key, status) for key, status in rows if key != "Key"]
    if not rows:
        return None
    missing = [k for k, s in rows if s == "MISSING"]
    unexpected = [k for k, s in rows if s == "UNEXPECTED"]
    if len(missing) + len(unexpected) != len(rows) or not missing:
        return None  # mismatched sizes, conversion errors, ...
    if not all(FRESH_HEAD.match(k) for k in missing) or not all(PRETRAINING_HEAD.match(k) for k in unexpected):
        return None
    model = re.sub(r"\x1b\[[0-9;]*m", "", report.split(LOAD_REPORT)[0]).strip().split()[-1:] or ["model"]
    heads = sorted({k.rsplit(".", 1)[0] for k in missing})
    line = f"{model[0]}: new task head initialised ({', '.join(heads)}), to be trained below"
    if unexpected:
        dropped = sorted({k.split(".")[0] for k in unexpected})
        line += f"; the checkpoint's pre-training head ({', '.join(dropped)}) is not used"
    return line


def only_tied_copies(listed: str) -> bool:
    """Whether a printed list of missing keys (`['a.weight', 'b.weight'].`) names only copies of
    a tied embedding."""
    import ast

    try:
        keys = ast.literal_eval(listed.strip().rstrip("."))
    except (ValueError, SyntaxError):
        return False
    return isinstance(keys, list) and bool(keys) and all(isinstance(k, str) and TIED_COPIES.match(k) for k in keys)


class KnownNoise(logging.Filter):
    """Drops the known messages above; a fresh-head LOAD REPORT becomes one printed line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(BITSANDBYTES_KERNEL) or message.startswith(MTIME):
            return False
        if message.startswith(MISSING_KEYS) and only_tied_copies(message[len(MISSING_KEYS):]):
            return False
        if LOAD_REPORT in message:
            line = fresh_head_summary(message)
            if line is not None:
                # The explanation instead of the table, on stdout: it is a note, not a warning,
                # and a notebook shows whatever reaches stderr in a red box.
                print(line)
                return False
        return True


# The loggers that emit those messages (a filter on a logger sees only its own records).
NOISY_LOGGERS = ("bitsandbytes.backends.cpu.ops", "transformers.modeling_utils", "transformers.trainer_utils",
                 "transformers.trainer")


GRADIENT_CHECKPOINTING_ALIAS = "`is_gradient_checkpointing` is deprecated"


def install_filters() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=re.escape(GRADIENT_CHECKPOINTING_ALIAS), category=FutureWarning)
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownNoise) for f in logger.filters):
            logger.addFilter(KnownNoise())


def final_line_tqdm():
    """A tqdm class that draws nothing while running and writes one plain line when done."""
    from tqdm import std

    class FinalLineTqdm(std.tqdm):
        def __init__(self, *args, **kwargs):
            self._finished = False
            kwargs["mininterval"] = float("inf")  # no redraws while running
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None):
            if not self._finished:
                return True
            return super().display(msg, pos)

        def close(self):
            self._finished = True
            super().close()

    return FinalLineTqdm


def use_final_line_progress() -> None:
    """Make `tqdm.auto.tqdm` (which transformers looks up at each call, and datasets and
    huggingface_hub subclass when imported) the final-line class."""
    import tqdm.auto

    if not getattr(tqdm.auto.tqdm, "_nbutils_final_line", False):
        cls = final_line_tqdm()
        cls._nbutils_final_line = True
        tqdm.auto.tqdm = cls


def headless() -> bool:
    return os.environ.get(HEADLESS_VARIABLE) == "1"


def install() -> None:
    """Filter the known noise; in a headless run, final-line progress bars. Idempotent."""
    install_filters()
    if headless():
        use_final_line_progress()
