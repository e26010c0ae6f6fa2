"""Small builders shared by the fine-tuning technique tests: tiny models and a few sample essays."""

from __future__ import annotations

import csv

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                          AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments)

from tests import fixtures

ENCODERS = ("bert", "distilbert", "roberta", "deberta-v2")
ALL_ARCHS = ENCODERS + ("t5", "llama")


def tiny_classifier(cache, arch: str, seed: int = 0):
    torch.manual_seed(seed)
    path = fixtures.tiny_model_dir(cache, arch)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, use_safetensors=True)
    if model.config.pad_token_id is None:  # Llama has no pad token; classification needs one
        model.config.pad_token_id = model.config.eos_token_id
    return model


def tiny_native(cache, arch: str):
    """The model as the other notebooks load it: T5 as seq2seq, Llama as a causal LM."""
    path = fixtures.tiny_model_dir(cache, arch)
    auto = {"t5": AutoModelForSeq2SeqLM, "llama": AutoModelForCausalLM}.get(arch, AutoModelForSequenceClassification)
    return auto.from_pretrained(path, use_safetensors=True)


def essays(cache, n: int = 32) -> list[dict]:
    with (fixtures.sample_data_dir(cache) / "daigt_v2_train.csv").open() as f:
        return [row for _, row in zip(range(n), csv.DictReader(f))]


def tokenized_essays(cache, arch: str = "bert", n: int = 32, max_length: int = 48):
    from datasets import Dataset

    tokenizer = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, arch))
    rows = essays(cache, n)
    data = Dataset.from_dict({"text": [r["text"] for r in rows], "labels": [int(r["label"]) for r in rows],
                              "prompt_name": [r["prompt_name"] for r in rows]})
    tokenized = data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
                         batched=True, remove_columns=["text", "prompt_name"])
    return tokenized, tokenizer


def training_args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path / "checkpoints"), per_device_train_batch_size=8,
                    num_train_epochs=2, learning_rate=1e-2, weight_decay=0.1, lr_scheduler_type="constant",
                    save_strategy="no", eval_strategy="no", report_to="none", logging_strategy="no",
                    use_cpu=True, seed=0, dataloader_pin_memory=False, disable_tqdm=True)
    settings.update(overrides)
    return TrainingArguments(**settings)
