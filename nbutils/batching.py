"""How every notebook batches its training examples: no compute spent on padding.

Fine-tuning cost is token slots through the model. The original notebooks padded every example
to a fixed `max_length` and drew examples in random order; on samsum that leaves about a quarter
of the slots real. This module is the one place that decides batching instead:

- classification and seq2seq: pad each batch only to its own longest example
  (`classification_collator`, `seq2seq_collator`, the latter filling label padding with -100)
  and draw examples of similar length together (`length_grouping()` -> TrainingArguments kwargs).
  `order_batches(trainer)` then makes that order resumable (seeded per epoch) and stops the
  length grouping from reordering `predict()`'s output.
- SFT (TRL): `sft_batching(model, ...)` packs examples into rows without padding where the
  model's attention keeps packed examples apart, which it checks on the model itself
  (`packed_attention_isolated`), and falls back to length-grouped plain padding where it does
  not; it says why either way.
- `training_padding_stats(trainer)` counts real tokens and token slots of the trainer's own
  training batches, and `train_token_summary` turns them into run-record fields
  (real tokens, slots, padding efficiency, tokens/s).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field

LABEL_PAD = -100  # the loss ignores this label: padding and prompt tokens

# Attention implementations that run each packed example on its own (variable-length kernels
# given `cu_seq_lens`, or flex attention's block-sparse mask): packing costs nothing extra, so a
# batch of several packed rows is fine. Other implementations (sdpa, eager) separate packed
# examples with a dense block-diagonal mask over the whole packed row: attention then costs
# (row length)^2, so each forward gets a single row of at most max_length tokens.
_SEGMENT_WISE = ("flash", "flex")


# ----------------------------------------------------------------------------------------------
# Classification and seq2seq: dynamic padding and length-grouped sampling


def classification_collator(tokenizer, pad_to_multiple_of: int | None = None):
    """Pads each batch to its longest example (attention mask 0 on the padding)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)


def seq2seq_collator(tokenizer, model=None, pad_to_multiple_of: int | None = None):
    """Pads inputs and labels of each batch to the batch's longest; label padding is -100 so the
    loss ignores it. Given the model, it also builds `decoder_input_ids` from the labels."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=LABEL_PAD,
                                  pad_to_multiple_of=pad_to_multiple_of)


def length_grouping(enabled: bool = True) -> dict:
    """TrainingArguments kwargs that draw examples of similar length into the same batch.

    transformers 5 spells it `train_sampling_strategy="group_by_length"` (there is no
    `group_by_length` argument any more). The sampler shuffles, cuts the order into mega-batches
    of 50 batches, and sorts each by the length of the model's first input (`input_ids`).
    A precomputed `length` column does not help with the default `remove_unused_columns=True`:
    the Trainer drops it before it builds the sampler, so lengths come from `input_ids`.
    Note: the same setting also reorders evaluation and `predict()`; see `keep_eval_order`.
    """
    return {"train_sampling_strategy": "group_by_length" if enabled else "random"}


class EpochSeededLengthGroupedSampler:
    """transformers' length-grouped order, drawn from `seed + epoch` instead of the global RNG.

    transformers' `LengthGroupedSampler` draws each epoch's order from the global torch random
    state when the epoch starts. A run resumed in the middle of epoch e >= 1 restores the RNG
    state of its checkpoint, not the state at the start of epoch e, so it would train the rest
    of that epoch on other batches than the uninterrupted run did. Seeding each epoch's order
    with seed + epoch (what accelerate does for plain shuffling) makes it independent of
    history: the same order in a resumed run and in every DDP process.
    """

    def __init__(self, lengths, batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def order_batches(trainer):
    """Make a trainer's batch order safe to rely on; returns the trainer. Call it right after
    building any Trainer that may use `length_grouping()`:

    - training: the length-grouped order of each epoch comes from seed + epoch
      (`EpochSeededLengthGroupedSampler`), so a run resumed mid-epoch sees the same batches;
    - evaluation and `predict()`: rows in the data's own order (`keep_eval_order`).

    The Trainer's own `get_train_dataloader` (the public method its documentation says to
    override) still builds the loader: its column removal, collator, workers, and accelerate's
    split of the batches across processes. It builds it in the data's order (a sequential
    sampler, which like the epoch-seeded one draws nothing from the random state), and the
    loader's sampler is then the epoch-seeded one (accelerate's `set_sampler`).
    """
    from transformers.trainer_utils import has_length

    build = trainer.get_train_dataloader

    def train_dataloader():
        args = trainer.args
        if args.train_sampling_strategy != "group_by_length" or not has_length(trainer.train_dataset):
            return build()
        with _sampling(args, "sequential"):
            loader = build()
        grouped = _length_grouped_sampler(trainer, loader.dataset)
        seed = args.data_seed if args.data_seed is not None else args.seed
        loader.set_sampler(EpochSeededLengthGroupedSampler(grouped.lengths, grouped.batch_size, seed))
        return loader

    trainer.get_train_dataloader = train_dataloader
    trainer.add_callback(_run_start()())  # for `train_token_summary`'s rate of a resumed run
    return keep_eval_order(trainer)


def _length_grouped_sampler(trainer, dataset):
    """transformers' `LengthGroupedSampler` over `dataset` as the Trainer builds it for training
    with `train_sampling_strategy="group_by_length"` (transformers 5.24): lengths from the length
    column where the dataset still has one, else from the model's first input."""
    from datasets import Dataset
    from transformers.trainer_pt_utils import LengthGroupedSampler

    args = trainer.args
    lengths = None
    if isinstance(dataset, Dataset) and args.length_column_name in dataset.column_names:
        lengths = dataset[args.length_column_name]
    names = getattr(trainer.processing_class, "model_input_names", None)
    return LengthGroupedSampler(args.train_batch_size * args.gradient_accumulation_steps, dataset=dataset,
                                lengths=lengths, model_input_name=names[0] if names else None)


@contextlib.contextmanager
def _sampling(args, strategy: str):
    """`args.train_sampling_strategy` set to `strategy` while the block runs."""
    saved = args.train_sampling_strategy
    args.train_sampling_strategy = strategy
    try:
        yield
    finally:
        args.train_sampling_strategy = saved


def keep_eval_order(trainer):
    """Make `trainer.evaluate()`/`predict()` read the data in its own order again; returns the trainer.

    With `train_sampling_strategy="group_by_length"`, transformers also length-groups the
    evaluation and test dataloaders (with a fixed seed), so `predict(test).predictions[i]`
    is not the prediction for `test[i]`. Metrics computed from `label_ids` are unaffected, but
    anything that pairs predictions with dataset rows (saved probabilities, generated
    summaries against reference columns, executed code) would silently pair the wrong rows.
    The Trainer's public `get_eval_dataloader` / `get_test_dataloader` build those loaders with
    the training strategy set to "random" meanwhile, which keeps the data's order.
    """
    for name in ("get_eval_dataloader", "get_test_dataloader"):
        build = getattr(trainer, name)

        def in_order(*args, build=build, **kwargs):
            with _sampling(trainer.args, "random"):
                return build(*args, **kwargs)

        setattr(trainer, name, in_order)
    return trainer


# ----------------------------------------------------------------------------------------------
# SFT: packing / padding-free where the attention keeps packed examples apart


def attention_implementation(model) -> str:
    """The attention implementation the model runs ("sdpa", "eager", "flash_attention_2", ...).

    Read from transformers' private `config._attn_implementation`: transformers 5.24 has no
    public way to read it (`from_pretrained(attn_implementation=...)` and
    `set_attn_implementation` set it; `config.to_dict()` leaves it out). The one private name
    nbutils reads (tests/test_private_names.py lists it); TRL 1.16 reads it the same way.
    """
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def packed_attention_isolated(model, lengths: tuple[int, int] = (16, 12)) -> tuple[bool, str]:
    """Check on the model itself whether packed examples stay apart: run two short random
    sequences packed into one row, as TRL's padding-free collator builds it (no attention mask,
    `position_ids` restarting at 0, `cu_seq_lens`), and each alone; the second sequence's logits
    must come out as they do alone.

    A control run of the same row with an all-ones attention mask (plain packing without
    position-aware masking) shows how far those logits move when the second example sees the
    first. Isolated means the packed run is within a fifth of that distance: exact in float32,
    and well clear of bf16 rounding, which moves logits by far less than a leak does.
    Costs four forward passes of at most 28 tokens. Returns (isolated, what was found).
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    impl = attention_implementation(model)
    name = type(model).__name__
    embeddings = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(3, min(embeddings.shape[0], 1000), (n,), generator=generator)
                     for n in lengths)
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": first.tolist()}, {"input_ids": second.tolist()}])
    batch = {k: v.to(embeddings.device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
    was_training = model.training
    model.eval()  # no dropout: the runs must be comparable
    try:
        with torch.no_grad():
            packed = model(**batch, use_cache=False).logits[0].float()
            alone = [model(input_ids=ids[None].to(embeddings.device), use_cache=False).logits[0].float()
                     for ids in (first, second)]
            leaked = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           attention_mask=torch.ones_like(batch["input_ids"]),
                           use_cache=False).logits[0].float()
    except Exception as err:  # noqa: BLE001 - any failure means "do not pack this model"
        return False, (f"{name} ({impl} attention) failed on a padding-free packed batch: "
                       f"{type(err).__name__}: {err}")
    finally:
        model.train(was_training)
    n = lengths[0]
    error = max((packed[:n] - alone[0]).abs().mean().item(), (packed[n:] - alone[1]).abs().mean().item())
    leak = (leaked[n:] - alone[1]).abs().mean().item()
    found = f"packed vs separate logits differ by {error:.1e} on average, a leaking row by {leak:.1e}"
    if leak > 0 and error <= 0.2 * leak:
        return True, f"{name} with {impl} attention keeps packed examples apart ({found})"
    return False, f"{name} with {impl} attention lets packed examples see each other ({found})"


def packed_rows(lengths, max_length: int) -> int:
    """How many rows TRL's best-fit-decreasing packing makes of examples of these token counts."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    lengths = [min(int(n), max_length) for n in lengths]
    return len(pack_dataset(Dataset.from_dict({"input_ids": [[0] * n for n in lengths]}), max_length, "bfd"))


def forward_layout(impl: str, rows_per_step: int, gradient_accumulation_steps: int = 1) -> tuple[int, int, str]:
    """(rows per forward, gradient accumulation steps, why) for packed rows under attention `impl`."""
    if any(name in impl for name in _SEGMENT_WISE):
        per_device = max(1, math.ceil(rows_per_step / max(1, gradient_accumulation_steps)))
        return (per_device, max(1, round(rows_per_step / per_device)),
                f"{impl} attends within each packed example, so a forward may take several rows")
    return (1, rows_per_step, f"{impl} masks a packed row densely (cost grows with the row length squared), "
                              "so one row per forward, the batch made up by gradient accumulation")


@dataclass(frozen=True)
class SFTBatching:
    """The batching decided for an SFT run: `config` goes into `SFTConfig(**config, ...)`
    (it holds the batch size and gradient accumulation: do not pass those again)."""

    packing: bool
    reason: str
    config: dict = field(default_factory=dict)

    def __str__(self) -> str:
        how = "packing without padding" if self.packing else "length-grouped padding per batch"
        settings = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"SFT batching: {how} ({settings}). Why: {self.reason}"


def sft_batching(model, batch_size: int, gradient_accumulation_steps: int = 1, max_length: int = 512,
                 lengths=None, verbose: bool = True) -> SFTBatching:
    """Decide how an SFT run batches, for TRL's `SFTConfig`.

    Where the model keeps packed examples apart (checked by `packed_attention_isolated`), pack
    them into rows of up to `max_length` tokens with no padding (TRL's best-fit-decreasing
    packing, which is padding-free). With FlashAttention or flex attention a forward takes
    several rows; with sdpa or eager attention, which mask a packed row densely, one row per
    forward and the batch made up by gradient accumulation. Elsewhere: plain padding per batch,
    with examples of similar length grouped together.

    `batch_size` and `gradient_accumulation_steps` are the recipe's, in examples. Given the
    examples' token counts (`lengths`), the packed rows per optimizer step are chosen so that a
    step still holds about `batch_size * gradient_accumulation_steps` examples, and the run keeps
    the recipe's number of optimizer steps (packing several examples into a row would otherwise
    cut it). `max_length` is the packed row length and the truncation length.
    """
    base = {"max_length": max_length}
    isolated, finding = packed_attention_isolated(model)
    if not isolated:
        decision = SFTBatching(False, finding + "; so each batch is padded to its longest example instead",
                               {**base, "packing": False, "padding_free": False, **length_grouping(),
                                "per_device_train_batch_size": batch_size,
                                "gradient_accumulation_steps": gradient_accumulation_steps})
    else:
        examples_per_step = batch_size * gradient_accumulation_steps
        rows_per_step = examples_per_step
        scaled = ""
        if lengths is not None and len(lengths):
            rows = packed_rows(lengths, max_length)
            rows_per_step = max(1, round(examples_per_step * rows / len(lengths)))
            scaled = (f"; {len(lengths)} examples pack into {rows} rows, so {rows_per_step} rows per "
                      f"optimizer step keep about {examples_per_step} examples per step")
        per_device, accumulation, layout = forward_layout(attention_implementation(model), rows_per_step,
                                                          gradient_accumulation_steps)
        decision = SFTBatching(True, f"{finding}; {layout}{scaled}",
                               {**base, "packing": True, "packing_strategy": "bfd", "padding_free": True,
                                "per_device_train_batch_size": per_device,
                                "gradient_accumulation_steps": accumulation,
                                "per_device_eval_batch_size": per_device})
    if verbose:
        print(decision)
    return decision


# ----------------------------------------------------------------------------------------------
# Counting: real tokens and token slots


def padding_stats(batches, *, pad_token_id: int | None = None, count_labels: bool = False) -> dict:
    """Real tokens and token slots over collated batches (dicts of tensors).

    Inputs: attention-mask ones are real; in a padding-free batch (no attention mask, restarting
    `position_ids`) every token except trailing padding. With `count_labels` (encoder-decoder
    models, whose decoder runs over every label position) the labels count too: those other than
    -100 are real. Returns examples, batches, real_tokens, token_slots and padding_efficiency
    (their ratio) over everything counted; with `count_labels` also the input and target parts
    (input_padding_efficiency, target_padding_efficiency, target_real_tokens, target_token_slots).
    """
    real = slots = target_real = target_slots = examples = n_batches = 0
    for batch in batches:
        n_batches += 1
        ids = batch["input_ids"]
        if "attention_mask" in batch:
            mask = batch["attention_mask"]
            real += int(mask.sum())
            slots += mask.numel()
            examples += ids.shape[0]
        elif "position_ids" in batch:  # padding-free: examples packed end to end in each row
            starts = batch["position_ids"] == 0
            padding = 0
            if pad_token_id is not None:
                # Trailing padding (pad_to_multiple_of) sits at position 0 with the pad id.
                padding = int((starts & (ids == pad_token_id)).flip(-1).int().cumprod(-1).sum())
            real += ids.numel() - padding
            slots += ids.numel()
            examples += int(starts.sum()) - padding
        else:
            real += ids.numel()
            slots += ids.numel()
            examples += ids.shape[0]
        if count_labels and "labels" in batch:
            labels = batch["labels"]
            target_real += int((labels != LABEL_PAD).sum())
            target_slots += labels.numel()

    def ratio(a, b):
        return round(a / b, 4) if b else None

    stats = {"examples": examples, "batches": n_batches, "real_tokens": real + target_real,
             "token_slots": slots + target_slots, "padding_efficiency": ratio(real + target_real, slots + target_slots)}
    if count_labels:
        stats.update(input_padding_efficiency=ratio(real, slots), target_real_tokens=target_real,
                     target_token_slots=target_slots, target_padding_efficiency=ratio(target_real, target_slots))
    return stats


def training_padding_stats(trainer, count_labels: bool | None = None) -> dict:
    """`padding_stats` of one epoch of the trainer's own training dataloader (its sampler and
    collator), on this process; summed over processes in a multi-process run.

    It collates one epoch without running the model, and leaves the random state as it found it
    (drawing a sampler order would otherwise shift the training run's). For encoder-decoder
    models the decoder's labels count too (`count_labels=None` decides from the model config).
    """
    import torch

    model = trainer.model
    if count_labels is None:
        count_labels = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    pad_token_id = getattr(trainer.processing_class, "pad_token_id", None)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        stats = padding_stats(trainer.get_train_dataloader(), pad_token_id=pad_token_id,
                              count_labels=count_labels)
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None and accelerator.num_processes > 1:
        keys = ["examples", "batches", "real_tokens", "token_slots"]
        keys += ["target_real_tokens", "target_token_slots"] if count_labels else []
        totals = accelerator.reduce(torch.tensor([stats[k] for k in keys], device=accelerator.device),
                                    reduction="sum").tolist()
        stats = {**stats, **dict(zip(keys, map(int, totals)))}
        stats["padding_efficiency"] = round(stats["real_tokens"] / stats["token_slots"], 4)
        if count_labels:
            target_real, target_slots = stats["target_real_tokens"], stats["target_token_slots"]
            stats["input_padding_efficiency"] = round((stats["real_tokens"] - target_real)
                                                      / (stats["token_slots"] - target_slots), 4)
            stats["target_padding_efficiency"] = round(target_real / target_slots, 4) if target_slots else None
    return stats


def train_token_summary(trainer, train_output, count_labels: bool | None = None) -> dict:
    """Run-record fields for the `train` dict: real tokens and token slots processed in training
    (one epoch's count times the epochs run), padding efficiency, and real tokens per second;
    for encoder-decoder models also the input (encoder) and target (decoder) efficiencies.

        train = {**record.train_summary(out), **batching.train_token_summary(trainer, out)}
    """
    stats = training_padding_stats(trainer, count_labels=count_labels)
    metrics = train_output.metrics
    epochs = float(metrics.get("epoch", trainer.args.num_train_epochs) or 0.0)
    runtime = float(metrics["train_runtime"])
    real = int(round(stats["real_tokens"] * epochs))
    slots = int(round(stats["token_slots"] * epochs))
    # A resumed run's runtime covers only the steps run in this call: rate those steps' tokens.
    share = steps_run(trainer, train_output) / max(trainer.state.max_steps, 1)
    summary = {"real_tokens": real, "token_slots": slots, "padding_efficiency": stats["padding_efficiency"],
               "tokens_per_s": round(real * share / runtime, 1) if runtime > 0 else None}
    for part in ("input_padding_efficiency", "target_padding_efficiency"):  # encoder-decoder models
        if part in stats:
            summary[part] = stats[part]
    return summary


def steps_run(trainer, train_output) -> float:
    """Optimizer steps run by the `train()` call that returned `train_output`: all of them in a
    fresh run, those after its checkpoint in a resumed one. Counted from the step the call began
    at (the `RunStart` callback that `order_batches` adds); for a trainer without one, from the
    Trainer's own rate for the call (`train_steps_per_second`, rounded to 3 decimals) times its
    runtime."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, _run_start()) and callback.step is not None:
            return trainer.state.global_step - callback.step
    metrics = train_output.metrics
    return float(metrics.get("train_steps_per_second", 0.0)) * float(metrics.get("train_runtime", 0.0))


@functools.cache
def _run_start():
    """The `RunStart` callback class (transformers imported only when it is needed)."""
    from transformers import TrainerCallback

    class RunStart(TrainerCallback):
        """Remembers the optimizer step each `train()` call begins at (a resumed run: its
        checkpoint's; the Trainer has restored its state when it calls `on_train_begin`)."""

        def __init__(self):
            self.step = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.step = state.global_step

    return RunStart


def eval_batch_size(requested: int, *datasets) -> int:
    """Per-device evaluation batch size, capped so that in a multi-process run each split fills
    at least one batch per process.

    With several processes (DDP) and a split smaller than one per-device batch, accelerate
    fills the processes' batches by repeating examples and `predict()` returned them all (16
    test dialogues came back as 64 rows with batch 32 in 2 processes). A batch of at most
    ceil(rows / processes) avoids that; in one process the requested size stands.
    """
    from nbutils.run import runtime

    processes = runtime.processes()
    if processes <= 1:
        return requested
    smallest = min((len(d) for d in datasets), default=requested * processes)
    return max(1, min(requested, math.ceil(smallest / processes)))
