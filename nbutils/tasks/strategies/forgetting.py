"""Forgetting: how much fine-tuning degrades what a backbone learnt in pre-training.

Measured as the backbone's masked-language-model loss on held-out general text, before and
after fine-tuning, through the backbone's **own pre-trained MLM head**:

1. `load_masked_lm(checkpoint)` loads the checkpoint as a masked LM and refuses one whose MLM
   head would be freshly initialised (a loss through a random head measures nothing);
2. `mask_text(tokenizer, texts, seed=...)` masks the general text once, with a fixed seed, as
   BERT's pre-training does (15% of the tokens; of those 80% [MASK], 10% a random token, 10%
   kept), so "before" and "after" score exactly the same positions;
3. `mlm_loss(masked_lm, masked)` is the mean cross-entropy over the masked tokens (and the share
   predicted exactly);
4. after fine-tuning, `transplant_backbone(classifier, masked_lm)` copies the fine-tuned encoder
   weights into a copy of the masked LM, keeping its pre-trained head, and step 3 runs again.
   A LoRA model is merged first. In BERT-style models the head's output matrix is tied to the
   input word embeddings: it follows them, as it does in the checkpoint itself.

`forgetting = loss after - loss before` (in nats per masked token; `relative` as a fraction).
Unchanged weights give exactly the same loss, so any difference comes from fine-tuning.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MaskedText:
    """General text masked once, per example without padding: token ids with the masked
    positions replaced, and labels holding the original token there (-100 elsewhere)."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    pad_token_id: int
    seed: int
    probability: float

    @property
    def masked_tokens(self) -> int:
        return sum(sum(1 for label in row if label != -100) for row in self.labels)

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.input_ids)


# ----------------------------------------------------------------------------------------------
# The held-out general text


def load_general_text(source: str, column: str = "text", config: str = "", split: str = "test",
                      min_words: int = 20, max_passages: int = 0, param: str = "general_text_source") -> list[str]:
    """Passages of general text: a .csv/.jsonl/.parquet file or a hub data set (wikitext:
    `Salesforce/wikitext`, config `wikitext-103-raw-v1`, split `test`).

    Keeps non-empty passages of at least `min_words` words, dropping wikitext's ` = Heading = `
    lines; the first `max_passages` of them (0: all), in the source's order.
    """
    from datasets import load_dataset

    from nbutils.data import is_file_source, load_table, require_columns

    if not isinstance(source, str) or not source:
        raise ValueError(f"{param} must be a file path or a hub data set id, got {source!r}")
    if is_file_source(source):
        table = load_table(source, param=param)
    else:
        table = load_dataset(source, config or None, split=split)
    require_columns(table, **{param.replace("source", "column"): column})
    passages = []
    for text in table[column]:
        text = (text or "").strip()
        if text.startswith("=") and text.endswith("="):  # a wikitext heading
            continue
        if len(text.split()) >= min_words:
            passages.append(text)
            if max_passages and len(passages) == max_passages:
                break
    if not passages:
        raise ValueError(f"{param}={source!r}: no passage of at least {min_words} words in column "
                         f"{column!r}; lower general_text_min_words or use another text")
    return passages


def text_fingerprint(passages: list[str]) -> str:
    """The SHA-256 of the passages themselves (what was measured, whatever the source)."""
    import hashlib

    return "sha256:" + hashlib.sha256("\n\0".join(passages).encode("utf-8")).hexdigest()


def shared_passages(general: list[str], task_texts) -> int:
    """How many general-text passages also occur, verbatim, among the task's texts."""
    task = {str(t).strip() for t in task_texts}
    return sum(1 for passage in general if passage.strip() in task)


# ----------------------------------------------------------------------------------------------
# Masking and scoring


def mask_text(tokenizer, texts: list[str], max_length: int = 128, probability: float = 0.15,
              seed: int = 0, copies: int = 1) -> MaskedText:
    """Tokenize `texts` (truncated at `max_length`) and mask them once, deterministically.
    With `copies` > 1 every text is masked that many times, at independently drawn positions:
    more masked tokens, so a steadier loss, from a short text.

    The masking is transformers' own (`DataCollatorForLanguageModeling`, BERT's 80/10/10 rule)
    with its own seeded generator, so it does not depend on, or disturb, the global RNG: the same
    texts, tokenizer and seed give the same masked positions in every process.
    Special tokens ([CLS], [SEP], padding) are never masked.
    """
    from transformers import DataCollatorForLanguageModeling

    if tokenizer.mask_token is None:
        raise ValueError(f"{type(tokenizer).__name__} has no mask token: forgetting is measured with a "
                         "masked-language-model loss, which needs an encoder's tokenizer (BERT, RoBERTa, ...)")
    if not 0 < probability < 1:
        raise ValueError(f"mlm_probability must lie strictly between 0 and 1, got {probability!r}")
    if not texts:
        raise ValueError("no general text to mask")
    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"mlm_mask_copies must be a whole number >= 1, got {copies!r}")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] * copies
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=probability,
                                               seed=seed, return_tensors="pt")
    batch = collator([{"input_ids": ids} for ids in encoded])  # one call: one stream of draws
    lengths = [len(ids) for ids in encoded]
    masked = MaskedText(input_ids=[row[:n] for row, n in zip(batch["input_ids"].tolist(), lengths)],
                        labels=[row[:n] for row, n in zip(batch["labels"].tolist(), lengths)],
                        pad_token_id=tokenizer.pad_token_id, seed=seed, probability=probability)
    if masked.masked_tokens == 0:
        raise ValueError("masking selected no token: use more or longer general text")
    return masked


def mlm_loss(model, masked: MaskedText, batch_size: int = 32) -> dict:
    """Mean cross-entropy over every masked token of `masked` (nats), the share of masked tokens
    predicted exactly (`accuracy`), and how many tokens were scored.

    Evaluation mode, no gradients; the model stays where it is (CPU or GPU). Batches hold
    examples of similar length (sorted), padded with attention mask 0; the loss is summed over
    tokens, so every masked token weighs the same whatever its batch.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    order = sorted(range(len(masked.input_ids)), key=lambda i: len(masked.input_ids[i]))
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(masked.input_ids[i]) for i in rows)
                ids = torch.full((len(rows), width), masked.pad_token_id, dtype=torch.long)
                labels = torch.full((len(rows), width), -100, dtype=torch.long)
                attention = torch.zeros((len(rows), width), dtype=torch.long)
                for j, i in enumerate(rows):
                    n = len(masked.input_ids[i])
                    ids[j, :n] = torch.tensor(masked.input_ids[i])
                    labels[j, :n] = torch.tensor(masked.labels[i])
                    attention[j, :n] = 1
                ids, labels, attention = ids.to(device), labels.to(device), attention.to(device)
                logits = model(input_ids=ids, attention_mask=attention).logits.float()
                scored = labels != -100
                total += F.cross_entropy(logits[scored], labels[scored], reduction="sum").item()
                correct += int((logits[scored].argmax(-1) == labels[scored]).sum())
                count += int(scored.sum())
    finally:
        model.train(was_training)
    return {"loss": total / count, "accuracy": correct / count, "masked_tokens": count}


def chance_loss(vocab_size: int) -> float:
    """The loss of a model that guesses uniformly over the vocabulary: ln(vocab size)."""
    return math.log(vocab_size)


def head_is_informative(loss: float, vocab_size: int, margin: float = 0.8) -> bool:
    """Whether a masked-LM loss is clearly better than uniform guessing (below `margin` of
    ln(vocab)). A random, never pre-trained model scores about ln(vocab): its "forgetting" is
    noise."""
    return loss < margin * chance_loss(vocab_size)


def summarize(before: dict, after: dict) -> dict:
    """Run-record fields: the masked-LM loss and accuracy before and after, and the change."""
    return {"mlm_loss_before": before["loss"], "mlm_loss_after": after["loss"],
            "forgetting": after["loss"] - before["loss"],
            "forgetting_relative": after["loss"] / before["loss"] - 1,
            "mlm_accuracy_before": before["accuracy"], "mlm_accuracy_after": after["accuracy"]}


# ----------------------------------------------------------------------------------------------
# The backbone's own head


def _head_parameters(model) -> list[str]:
    """Names of the parameters outside the backbone (the MLM head)."""
    prefix = model.base_model_prefix + "."
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix)]


def load_masked_lm(model_name: str, **kwargs):
    """The checkpoint as a masked LM, with the MLM head it was pre-trained with.

    Raises if the checkpoint lacks (part of) that head: transformers would initialise the
    missing weights at random, and the loss through a random head says nothing about forgetting
    (a checkpoint saved as a classifier, or a decoder-only model, has no MLM head).
    `kwargs` go to `from_pretrained` (token, trust_remote_code, dtype, ...).
    """
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(model_name, use_safetensors=True,
                                                       output_loading_info=True, **kwargs)
    head = set(_head_parameters(model))
    missing = sorted(name for name in info.get("missing_keys", []) if name in head)
    if missing:
        raise ValueError(f"{model_name}: the checkpoint has no pre-trained masked-LM head ({', '.join(missing)} "
                         "would be initialised at random), so forgetting cannot be measured with the "
                         "model's own head; use the checkpoint the backbone was pre-trained as (e.g. "
                         "bert-base-uncased, roberta-base), not a fine-tuned classifier")
    return model.eval()


def transplant_backbone(fine_tuned, masked_lm):
    """A copy of `masked_lm` whose backbone (embeddings and transformer blocks) holds the weights
    of `fine_tuned`'s backbone; its MLM head stays the pre-trained one.

    `fine_tuned` is the task model (e.g. a `...ForSequenceClassification`), or a PEFT model, whose
    adapter is merged into a copy first. Parameters only the task model's backbone has (BERT's
    pooler) are left out; one that the masked LM's backbone needs but the task model lacks is an
    error. Neither input is changed.
    """
    from nbutils.layers import is_peft_model

    if is_peft_model(fine_tuned):
        fine_tuned = copy.deepcopy(fine_tuned).merge_and_unload()
    kinds = (getattr(fine_tuned.config, "model_type", None), getattr(masked_lm.config, "model_type", None))
    if kinds[0] != kinds[1]:
        raise ValueError(f"the fine-tuned model ({kinds[0]}) and the masked LM ({kinds[1]}) are not the "
                         "same architecture")
    prefix = masked_lm.base_model_prefix
    source = getattr(fine_tuned, fine_tuned.base_model_prefix).state_dict()
    result = copy.deepcopy(masked_lm)  # deepcopy keeps the head tied to the copied embeddings
    target = getattr(result, prefix)
    wanted = target.state_dict()
    missing = [name for name in wanted if name not in source]
    if missing:
        raise ValueError(f"the fine-tuned backbone lacks {len(missing)} weight(s) of the masked LM's "
                         f"backbone, e.g. {', '.join(missing[:3])}")
    device = next(result.parameters()).device
    target.load_state_dict({name: source[name].to(device) for name in wanted}, strict=True)
    return result.eval()
