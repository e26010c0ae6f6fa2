"""Causal-LM details that decide whether an instruction-tuned model learns to stop, measured honestly.

- `ensure_pad_token`: a pad token distinct from EOS. Setting pad = EOS (the original Llama-2
  notebooks' shortcut) lets padding logic treat every real EOS as padding, so the model is
  never trained to end an answer and generates until `max_new_tokens`.
- `sequence_lengths`: how long the examples are in tokens (with their prompts, for
  `nbutils.run.row_report.length_report`: how many `max_length` cuts, which then lose their EOS).
- `turn_labels` / `label_conversations`: the tokens of a conversation and which of them are
  targets: every assistant turn (`loss_on="all_assistant_turns"`) or only the last.
- `token_loss`: mean loss per completion token over a held-out split, and its perplexity,
  exp(mean token loss): the model scored on reference answers, never on its own output; only
  completion positions reach the vocabulary projection, in chunks of bounded size. Each
  example's summed loss and token count are kept, for `loss_intervals` (a bootstrap over
  held-out examples).
- `generate`: greedy answers that stop at any of the model's end tokens, with how many tokens
  each took and whether it stopped by itself.
"""

from __future__ import annotations

import math

import numpy as np


def ensure_pad_token(tokenizer, model, pad_token: str = "") -> dict:
    """Give the tokenizer and model a pad token that is not EOS; returns what was done.

    `pad_token` empty: keep the tokenizer's own pad token if it differs from EOS, else add a new
    `<pad>`. Otherwise use `pad_token` (added if the vocabulary lacks it). A token added to the
    vocabulary gets an embedding row (the embeddings are resized).
    """
    eos = tokenizer.eos_token
    current = tokenizer.pad_token
    wanted = pad_token or (current if current is not None and current != eos else "<pad>")
    if wanted == eos:
        raise ValueError(f"pad_token={wanted!r} is the EOS token; padding must use another token, "
                         "or the model never learns to stop")
    added = wanted not in tokenizer.get_vocab()
    if added:
        tokenizer.add_special_tokens({"pad_token": wanted})
    else:
        tokenizer.pad_token = wanted
    resized = model.get_input_embeddings().weight.shape[0] < len(tokenizer)
    if resized:
        # mean_resizing=False: the new row only ever sits under padding (attention mask 0,
        # label -100), so a plain initialisation is enough and keeps the load deterministic.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    return {"pad_token": wanted, "pad_token_id": tokenizer.pad_token_id, "added": added,
            "resized_embeddings": resized}


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and the generation config's EOS ids
    (chat models often list their end-of-turn token there too)."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, (list, tuple)) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def sequence_lengths(tokenizer, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Token counts of (prompt + completion) and of the prompt alone, for conversational
    prompt/completion rows, tokenized exactly as TRL's SFTTrainer does (chat template,
    generation prompt on the prompt alone)."""
    full, prompt = [], []
    for row in dataset:
        prompt.append(len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True,
                                                        tokenize=True, return_dict=True)["input_ids"]))
        full.append(len(tokenizer.apply_chat_template(row["prompt"] + row["completion"],
                                                      tokenize=True, return_dict=True)["input_ids"]))
    return np.asarray(full), np.asarray(prompt)


LOSS_ON = ("all_assistant_turns", "last_assistant_turn")


def _chat_ids(tokenizer, messages, add_generation_prompt: bool = False) -> list[int]:
    """Token ids of `messages` rendered with the chat template, as TRL's SFTTrainer tokenizes them."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                              tokenize=True, return_dict=True)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_loss_on(loss_on: str, param: str = "loss_on") -> str:
    if loss_on not in LOSS_ON:
        raise ValueError(f"{param} must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
    return loss_on


def turn_labels(tokenizer, messages: list[dict], loss_on: str = "all_assistant_turns",
                completion_only: bool = True) -> dict:
    """`input_ids` and `labels` of one conversation (a list of messages ending with an answer).

    Targets (labels equal to the ids) are the tokens of every assistant turn
    (`loss_on="all_assistant_turns"`), or of the last one only (`"last_assistant_turn"`, what
    TRL's completion-only loss gives a prompt/completion row); everything else is -100. With
    `completion_only=False` every token is a target. An assistant turn's tokens are found the
    way TRL finds the completion's: they start where the conversation up to that turn, rendered
    with the generation prompt, stops being a prefix of the whole conversation, and end where
    the conversation up to and including that turn does. So the turn's end-of-turn token (EOS,
    `</s>` or `<|im_end|>`) is a target, and the template needs no `{% generation %}` markers
    (TRL's `assistant_only_loss` needs them, and ships them only for templates it knows).
    """
    check_loss_on(loss_on)
    ids = _chat_ids(tokenizer, messages)
    if not completion_only:
        return {"input_ids": ids, "labels": list(ids)}
    labels = [-100] * len(ids)
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if loss_on == "last_assistant_turn":
        answers = answers[-1:]
    for i in answers:
        start = _common_prefix(_chat_ids(tokenizer, messages[:i], add_generation_prompt=True), ids)
        end = _common_prefix(_chat_ids(tokenizer, messages[:i + 1]), ids)
        if end <= start:
            raise ValueError(
                f"the chat template does not render the conversation up to assistant turn {i} as a prefix "
                "of the whole conversation, so that turn's tokens cannot be found; use "
                "loss_on='last_assistant_turn' (the last answer only) or a prefix-preserving template")
        labels[start:end] = ids[start:end]
    return {"input_ids": ids, "labels": labels}


def label_conversations(tokenizer, pairs, loss_on: str = "all_assistant_turns", completion_only: bool = True,
                        max_length: int | None = None):
    """A tokenized `datasets.Dataset` (`input_ids`, `labels`) of conversational prompt/completion
    rows (`turn_labels` on prompt + completion), for `SFTTrainer`, which keeps a `labels`
    column as it is. `max_length`: cut each example there, keeping its start, as the trainer
    cuts its training and evaluation examples (the held-out split is scored outside it)."""
    from datasets import Dataset

    rows = []
    for row in pairs:
        example = turn_labels(tokenizer, row["prompt"] + row["completion"], loss_on, completion_only)
        if max_length:
            example = {key: value[:max_length] for key, value in example.items()}
        rows.append(example)
    return Dataset.from_list(rows)


def _autocast(device, dtype):
    """Mixed precision as in training: on a GPU computing in 16 bits, layers of different dtypes
    (a 16-bit base, fp32 adapters) meet under autocast; on a CPU everything is fp32."""
    import torch

    enabled = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def examples_in_row(row):
    """(input ids, labels) of each training example in a prepared row: one, or several in a
    packed row (TRL's `seq_lengths` gives their lengths)."""
    ids, labels = row["input_ids"], row["labels"]
    start = 0
    for n in row.get("seq_lengths") or [len(ids)]:
        yield ids[start:start + n], labels[start:start + n]
        start += n


def training_examples(rows):
    """(input ids, labels) of every training example in prepared rows, packed or not."""
    for row in rows:
        yield from examples_in_row(row)


def label_checks(dataset, tokenizer, stop_ids=None) -> dict:
    """What a prepared (tokenized, labelled) training set teaches, per example (per packed
    piece when packed, from TRL's `seq_lengths`): how many start with exactly one BOS, how many
    have a stop token (EOS or end of turn) among their labels, and the share of masked labels."""
    stops = set(stop_ids or [tokenizer.eos_token_id])
    bos = tokenizer.bos_token_id
    pieces = one_bos = with_stop = masked = total = 0
    for row in dataset:
        for piece, piece_labels in examples_in_row(row):
            pieces += 1
            one_bos += bos is None or (piece[0] == bos and (len(piece) < 2 or piece[1] != bos))
            with_stop += any(label in stops for label in piece_labels)
        masked += sum(label == -100 for label in row["labels"])
        total += len(row["labels"])
    return {"examples": pieces, "one_bos": int(one_bos), "labels_with_stop_token": int(with_stop),
            "masked_label_fraction": masked / total if total else 0.0}


def _label_losses(model, ids, mask, keep, wanted, chunk_tokens: int):
    """Cross-entropy of each label in `wanted` at the positions `keep` (a boolean batch x
    length mask, row-major as `wanted`), as one fp32 CPU tensor, without the model building its
    logits.

    The model is asked for logits at `keep` only (`logits_to_keep`, a boolean mask, in
    transformers 5), and a pre-hook on its output layer takes the hidden states it receives,
    projects them onto the vocabulary `chunk_tokens` rows at a time (0: all at once) and hands
    the layer zero rows instead. The projection runs inside the model's forward, where the
    output layer's weights are in place: under FSDP2 the output layer shares a unit with the
    input embeddings, and calling it on its own after the forward leaves that unit in a state
    from which `train()` can no longer switch the optimizer over to the shards ("A parameter in
    the optimizer couldn't be switched to its sharded version": full fine-tuning scored before
    training)."""
    import torch
    import torch.nn.functional as F

    head = model.get_output_embeddings()
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)  # Gemma 2
    calls, losses = [], []

    def score(module, args):
        calls.append(1)
        hidden = args[0].reshape(-1, args[0].shape[-1])
        step = chunk_tokens or len(wanted)
        for begin in range(0, len(wanted), step):
            logits = module.forward(hidden[begin:begin + step]).float()  # forward(): not this hook again
            if cap:
                logits = torch.tanh(logits / cap) * cap
            losses.append(F.cross_entropy(logits, wanted[begin:begin + step], reduction="none").cpu())
            del logits
        return (args[0][:0],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(score)
    try:
        model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
    finally:
        handle.remove()
    if len(calls) != 1:
        raise RuntimeError(f"{type(model).__name__}: expected one call of its output layer, got "
                           f"{len(calls)}; the chunked loss needs a model whose logits are "
                           "output_layer(hidden states)")
    return torch.cat(losses)


def token_loss(model, dataset, pad_token_id: int, batch_size: int = 8, dtype=None,
               chunk_tokens: int = 1024) -> dict:
    """Mean cross-entropy per label token (labels != -100) over a tokenized split (`input_ids`,
    `labels`), and its perplexity. Exact over tokens: Trainer's `eval_loss` averages batch means
    instead. Each example is scored alone (right padding, attention mask), never packed with
    another. `dtype`: the 16-bit compute dtype of a GPU run (autocast), or None.

    Only the positions that predict a label are projected onto the vocabulary, `chunk_tokens`
    of them at a time (0: all of a batch's at once), so the logits held at any moment are at
    most `chunk_tokens` x vocabulary (each chunk's fp32 logits and their log-softmax: about
    8 bytes x chunk_tokens x vocabulary), whatever the batch size and sequence length. Building
    full fp32 logits for a batch of 4 x 1,024 tokens of Qwen2.5 (152k vocabulary) takes 2.5 GB
    per copy, and a plain cross-entropy makes two or three copies.

    Also returned, per example in the split's order: `example_losses` (its summed loss) and
    `example_tokens` (its label tokens), from which `loss_intervals` resamples examples.
    """
    import torch

    if chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be 0 (no chunking) or positive, got {chunk_tokens!r}")
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    example_losses = np.zeros(len(dataset), dtype=np.float64)
    example_tokens = np.zeros(len(dataset), dtype=np.int64)
    with torch.no_grad(), _autocast(device, dtype):
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            width = max(len(row["input_ids"]) for row in rows)
            ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, row in enumerate(rows):
                n = len(row["input_ids"])
                ids[j, :n], labels[j, :n], mask[j, :n] = (torch.tensor(row["input_ids"]),
                                                          torch.tensor(row["labels"]), 1)
            # The logit at position t predicts the token at t + 1: keep position t where the
            # label at t + 1 is scored.
            targets = labels[:, 1:]
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = targets != -100
            if not keep.any():
                continue
            wanted = targets[targets != -100].to(device)  # row-major, as the mask selects
            losses = _label_losses(model, ids.to(device), mask.to(device), keep.to(device), wanted, chunk_tokens)
            row_of_token = keep.nonzero(as_tuple=True)[0].numpy()  # the batch row of each scored label
            example_losses[start:start + len(rows)] = np.bincount(row_of_token, weights=losses.double().numpy(),
                                                                  minlength=len(rows))
            example_tokens[start:start + len(rows)] = np.bincount(row_of_token, minlength=len(rows))
    if was_training:
        model.train()
    count = int(example_tokens.sum())
    if count == 0:
        raise ValueError("no label tokens to score (every label is -100)")
    mean = float(example_losses.sum() / count)
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": count,
            "example_losses": example_losses, "example_tokens": example_tokens}


def _pooled_loss(example_losses, example_tokens) -> float:
    tokens = example_tokens.sum()
    return float(example_losses.sum() / tokens) if tokens else float("nan")


def loss_intervals(scores: dict, **bootstrap) -> dict:
    """Bootstrap intervals of the held-out loss and perplexity (`token_loss`'s scores) over the
    held-out examples: each resample redraws whole examples, and its loss is their summed token
    losses over their summed tokens (the metric itself, not a mean of per-example means), its
    perplexity the exponential of that. {"eval_loss": {...}, "eval_perplexity": {...}}."""
    from nbutils.metrics import bootstrap_interval

    losses, tokens = np.asarray(scores["example_losses"]), np.asarray(scores["example_tokens"])
    loss = bootstrap_interval(_pooled_loss, losses, tokens, **bootstrap)
    return {"eval_loss": loss,
            "eval_perplexity": {**loss, "low": math.exp(loss["low"]), "high": math.exp(loss["high"])}}


def generate(model, tokenizer, prompt_messages: list[dict], max_new_tokens: int, dtype=None) -> dict:
    """Greedy answer to one prompt (a list of messages), rendered with the chat template.

    Stops at any stop token (`stop_token_ids`) or after `max_new_tokens`; `stopped` says which.
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens!r}")
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    inputs = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    stops = stop_token_ids(tokenizer, model)
    with torch.no_grad(), _autocast(device, dtype):
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                                use_cache=True)
    if was_training:
        model.train()
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    stopped = bool(new) and new[-1] in stops
    return {"answer": tokenizer.decode(new, skip_special_tokens=True).strip(),
            "new_tokens": len(new), "stopped": stopped}
