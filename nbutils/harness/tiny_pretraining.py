"""A tiny BERT that has been briefly pre-trained, for measuring forgetting in smoke runs.

The tiny models of `nbutils.harness.tiny_models` are random: their masked-LM head predicts no better
than chance, so "forgetting" measured through it is noise. The strategies study needs a backbone
that knows something general before it is fine-tuned. This module makes one, the way real
backbones are made at toy scale: a tiny BERT (the tiny models' shape) pre-trained with
masked-LM, by the Trainer, on the `pretrain` split of the project's general text
(`nbutils.harness.samples.general_text`, encyclopedic passages, not essays), so it learns facts and
syntax its MLM head can show; the `heldout` split is what the study measures forgetting on.

Its tokenizer (WordPiece, lowercase, as `bert-base-uncased`) covers the general text and the
detection essays, as a real tokenizer covers every text its users fine-tune on.

It is built into `.cache/tiny-pretrained/bert` by `python -m nbutils.harness.fixtures`, with its own
stamp: it is pre-trained again only when the code that makes it changes (1000 optimizer steps
on one sentence-long row each, 15-30 s; on one CPU thread, so the weights come out byte for byte
the same from one process and core count to the next). Held-out loss after pre-training: about
3.6 nats per masked token against 6.7 for uniform guessing, 40% of masked tokens right.
The other tiny models are untouched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

FOLDER = "tiny-pretrained"
ARCH = "bert"
STEPS = 1000
BATCH = 32
LEARNING_RATE = 5e-3
MLM_PROBABILITY = 0.15


def model_dir(root: str | Path) -> Path:
    return Path(root) / FOLDER / ARCH


def _tokenizer(seed: int = 0):
    from transformers import BertTokenizer

    from nbutils.harness.samples import detection, general_text
    from nbutils.harness.tiny_models import _wordpiece_vocab

    texts = general_text.passages("pretrain", seed) + [row["text"] for row in detection.detection_rows(seed=seed)]
    return BertTokenizer(vocab=_wordpiece_vocab(texts, lowercase=True))


def pretrain_tiny_bert(out_dir: str | Path, seed: int = 0, steps: int = STEPS) -> Path:
    """Pre-train the tiny BERT with masked-LM and save it (safetensors) with its tokenizer."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import (BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, PrinterCallback,
                              Trainer, TrainingArguments)
    from transformers.utils import logging as hf_logging

    from nbutils.harness.samples import general_text
    from nbutils.harness.tiny_models import FFN, HEADS, HIDDEN, LAYERS, MAX_POSITIONS

    tokenizer = _tokenizer(seed)
    rows = tokenizer(general_text.passages("pretrain", seed))["input_ids"]  # one sentence a row
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=FFN,
                        max_position_embeddings=MAX_POSITIONS, pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums whatever the machine's core count
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(
                output_dir=scratch, max_steps=steps, per_device_train_batch_size=BATCH,
                learning_rate=LEARNING_RATE, lr_scheduler_type="linear", warmup_steps=0.05,
                weight_decay=0.01, adam_beta2=0.98, save_strategy="no", eval_strategy="no",
                logging_strategy="no", report_to="none", use_cpu=True, seed=seed,
                dataloader_pin_memory=False, disable_tqdm=True)
            collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY, seed=seed)
            trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": rows}),
                              data_collator=collator)
            trainer.remove_callback(PrinterCallback)  # no log lines in the fixtures' output
            trainer.train()  # about 80 passes over the sentences
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return Path(out_dir)


def stamp(seed: int = 0) -> str:
    """A hash of the code that makes the model (this module, the texts, the tokenizer's vocabulary
    builder and the model shape), and the seed."""
    from nbutils.harness import tiny_models
    from nbutils.harness.samples import detection, general_text

    code = b"".join(Path(m.__file__).read_bytes() for m in (tiny_models, detection, general_text))
    code += Path(__file__).read_bytes()
    return hashlib.sha256(code + str(seed).encode()).hexdigest()


def build(root: str | Path, seed: int = 0, force: bool = False, quiet: bool = False) -> Path:
    """Build the pre-trained tiny BERT under `root` unless its stamp says it is current.
    The caller holds the fixtures lock; the folder is swapped in whole when done."""
    target = model_dir(root)
    stamp_file = target / "stamp.json"
    current = stamp(seed)
    if not force and stamp_file.is_file() and json.loads(stamp_file.read_text()).get("stamp") == current:
        return target
    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    pretrain_tiny_bert(staging, seed)
    (staging / "stamp.json").write_text(json.dumps({"stamp": current, "seed": seed, "steps": STEPS}))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    if not quiet:
        print(f"pre-trained tiny {ARCH} (masked-LM, {STEPS} steps) -> {target}")
    return target
