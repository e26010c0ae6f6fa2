"""Batching without wasted compute (nbutils.batching): every real token reaches the model exactly
once, masks and labels match the tokens, packed examples stay apart, counts are right."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from nbutils import batching
from tools import bench
from tests import fixtures
from training_helpers import tiny_classifier, training_args

MAX_LENGTH = 40


def _random_rows(n, low, high, vocab, seed=0, labels=False):
    """Token-id rows of random lengths in [low, high] (ids clear of the special tokens)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, length in enumerate(rng.integers(low, high + 1, size=n)):
        row = {"input_ids": rng.integers(10, vocab, size=int(length)).tolist()}
        if labels:
            row["labels"] = i % 2
        rows.append(row)
    return rows


def _tiny_llama(cache, attn="sdpa"):
    path = fixtures.tiny_model_dir(cache, "llama")
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.unk_token  # any token but EOS; the batches below never need a new one
    return tok, AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, attn_implementation=attn)


def _tiny_mamba():
    """A recurrent model: its state runs on from one packed example into the next."""
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    return MambaForCausalLM(MambaConfig(vocab_size=1256, hidden_size=16, num_hidden_layers=1, state_size=4))


def _train_batches(trainer):
    return list(trainer.get_train_dataloader())


# --- packed examples stay apart in Llama's attention ---------------------------------------------

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_batch_gives_each_sequence_the_logits_it_gets_alone(cache, attn):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    _, model = _tiny_llama(cache, attn)
    model.eval()
    first, second = torch.arange(20, 29), torch.arange(100, 106)
    # Exactly what TRL's padding-free collator hands the model: one row, no attention mask,
    # position ids restarting at 0 for the second sequence.
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": first.tolist()}, {"input_ids": second.tolist()}])
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, 15)
    inputs = {k: v for k, v in packed.items() if k != "labels"}
    with torch.no_grad():
        together = model(**inputs, use_cache=False).logits[0]
        alone = [model(input_ids=ids[None], use_cache=False).logits[0] for ids in (first, second)]
        # Control: the same row with a plain causal mask lets the second sequence see the first.
        leaking = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                        attention_mask=torch.ones_like(packed["input_ids"]), use_cache=False).logits[0]
    torch.testing.assert_close(together[:9], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[9:], alone[1], atol=1e-5, rtol=1e-4)
    assert (leaking[9:] - alone[1]).abs().max() > 1e-3  # the comparison can see a leak


def test_sft_batching_packs_for_llama_one_row_per_forward_with_sdpa(cache):
    _, model = _tiny_llama(cache, "sdpa")
    lengths = [30, 10, 25, 12, 38, 5, 20, 18]
    decision = batching.sft_batching(model, batch_size=4, max_length=MAX_LENGTH, lengths=lengths, verbose=False)
    assert decision.packing
    rows = batching.packed_rows(lengths, MAX_LENGTH)
    assert rows < len(lengths)
    assert decision.config == {
        "max_length": MAX_LENGTH, "packing": True, "packing_strategy": "bfd", "padding_free": True,
        "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
        # about 4 examples per optimizer step, as the recipe's batch of 4
        "gradient_accumulation_steps": round(4 * rows / len(lengths))}
    assert "keeps packed examples apart" in decision.reason and "sdpa" in decision.reason
    assert "packing" in str(decision)


def test_packed_rows_per_forward_follow_the_attention_kernel():
    # Variable-length kernels attend within each packed example: several rows per forward.
    assert batching.forward_layout("flash_attention_2", 8, 2)[:2] == (4, 2)
    assert batching.forward_layout("flex_attention", 6)[:2] == (6, 1)
    # A dense mask over the packed row costs its length squared: one row per forward.
    assert batching.forward_layout("sdpa", 8, 2)[:2] == (1, 8)
    assert batching.forward_layout("eager", 3)[:2] == (1, 3)


def test_sft_batching_pads_where_packed_examples_would_leak():
    decision = batching.sft_batching(_tiny_mamba(), batch_size=4, verbose=False)
    assert not decision.packing
    assert decision.config["packing"] is False and decision.config["padding_free"] is False
    assert decision.config["train_sampling_strategy"] == "group_by_length"
    assert decision.config["per_device_train_batch_size"] == 4
    assert "MambaForCausalLM" in decision.reason and "padded" in decision.reason


# --- every real token reaches the model once; masks and labels match ----------------------------

def _rows_of_padded_batch(batch, pad_id):
    """Each row's real tokens, checking that the mask is 1 exactly on them (right padding)."""
    out = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        n = int(mask.sum())
        assert mask[:n].eq(1).all() and mask[n:].eq(0).all()
        assert ids[n:].eq(pad_id).all()
        out.append(ids[:n].tolist())
    return out


def test_classification_batches_keep_every_token_and_group_by_length(cache, tmp_path):
    from datasets import Dataset
    from transformers import Trainer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "bert"))
    rows = _random_rows(64, 3, 60, len(tok), labels=True)
    data = Dataset.from_list(rows)
    model = tiny_classifier(cache, "bert")

    def trainer(**args):
        return Trainer(model=model, args=training_args(tmp_path, per_device_train_batch_size=4, **args),
                       train_dataset=data, processing_class=tok, data_collator=batching.classification_collator(tok))

    grouped = trainer(**batching.length_grouping())
    seen = Counter()
    for batch in _train_batches(grouped):
        for ids, label in zip(_rows_of_padded_batch(batch, tok.pad_token_id), batch["labels"].tolist()):
            seen[(tuple(ids), label)] += 1
    assert seen == Counter((tuple(r["input_ids"]), r["labels"]) for r in rows)
    # Grouping by length is what removes the padding: far less of it than in random order
    # (64 examples make coarse groups; a full-size data set groups tighter still).
    grouped_eff = batching.training_padding_stats(grouped)["padding_efficiency"]
    random_eff = batching.training_padding_stats(trainer(**batching.length_grouping(False)))["padding_efficiency"]
    assert grouped_eff > random_eff + 0.15


def test_seq2seq_batches_keep_every_token_and_mask_label_padding(cache, tmp_path):
    from datasets import Dataset
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    path = fixtures.tiny_model_dir(cache, "t5")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, use_safetensors=True)
    sources = _random_rows(32, 3, 50, len(tok), seed=1)
    targets = _random_rows(32, 1, 12, len(tok), seed=2)
    data = Dataset.from_list([{"input_ids": s["input_ids"], "labels": t["input_ids"]}
                              for s, t in zip(sources, targets)])
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none",
                                    use_cpu=True, dataloader_pin_memory=False, **batching.length_grouping())
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             data_collator=batching.seq2seq_collator(tok, model))
    seen = Counter()
    for batch in _train_batches(trainer):
        # The collator adds no attention mask of its own for the pre-tokenized rows: the tokenizer's
        # pad() builds it, 1 on real tokens only.
        inputs = _rows_of_padded_batch(batch, tok.pad_token_id)
        for ids, labels, decoder in zip(inputs, batch["labels"], batch["decoder_input_ids"]):
            n = int((labels != batching.LABEL_PAD).sum())
            assert labels[n:].eq(batching.LABEL_PAD).all()  # label padding is ignored by the loss
            # The decoder reads the labels shifted right behind the start token.
            assert decoder[0] == model.config.decoder_start_token_id
            assert decoder[1:n].tolist() == labels[:n - 1].tolist()
            seen[(tuple(ids), tuple(labels[:n].tolist()))] += 1
    assert seen == Counter((tuple(s["input_ids"]), tuple(t["input_ids"])) for s, t in zip(sources, targets))


def _sft_trainer(tok, model, rows, tmp_path, config):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, dataloader_pin_memory=False,
                     activation_checkpointing=False, bf16=False, fp16=False, **config)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def test_packed_sft_batches_keep_every_token_up_to_max_length(cache, tmp_path):
    tok, model = _tiny_llama(cache)
    rows = _random_rows(24, 2, MAX_LENGTH + 15, len(tok), seed=3)  # some longer than max_length
    decision = batching.sft_batching(model, batch_size=4, max_length=MAX_LENGTH, verbose=False)
    trainer = _sft_trainer(tok, model, rows, tmp_path, decision.config)
    seen = Counter()
    for batch in _train_batches(trainer):
        assert "attention_mask" not in batch  # padding-free: the positions separate the examples
        ids, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
        starts = (positions == 0).nonzero().flatten().tolist() + [len(ids)]
        for a, b in zip(starts, starts[1:]):
            assert positions[a:b].tolist() == list(range(b - a))
            # Labels are the tokens themselves, except an example's first token, which must not
            # be predicted from the end of the example before it.
            assert labels[a] == batching.LABEL_PAD and labels[a + 1:b].tolist() == ids[a + 1:b].tolist()
            seen[tuple(ids[a:b].tolist())] += 1
    assert seen == Counter(tuple(r["input_ids"][:MAX_LENGTH]) for r in rows)


def test_padded_sft_batches_keep_every_token_and_mask_padding(cache, tmp_path):
    tok, _ = _tiny_llama(cache)
    model = _tiny_mamba()
    rows = _random_rows(24, 2, MAX_LENGTH + 15, len(tok), seed=4)
    decision = batching.sft_batching(model, batch_size=4, max_length=MAX_LENGTH, verbose=False)
    trainer = _sft_trainer(tok, model, rows, tmp_path, decision.config)
    seen = Counter()
    for batch in _train_batches(trainer):
        for ids, labels in zip(_rows_of_padded_batch(batch, tok.pad_token_id), batch["labels"]):
            n = len(ids)
            assert labels[:n].tolist() == ids and labels[n:].eq(batching.LABEL_PAD).all()
            seen[tuple(ids)] += 1
    assert seen == Counter(tuple(r["input_ids"][:MAX_LENGTH]) for r in rows)


# --- counting --------------------------------------------------------------------------------------

def test_padding_stats_counts_real_tokens_and_slots():
    padded = {"input_ids": torch.tensor([[5, 6, 7, 0], [5, 0, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]),
              "labels": torch.tensor([[8, 9, -100], [8, -100, -100]])}
    assert batching.padding_stats([padded]) == {"examples": 2, "batches": 1, "real_tokens": 4,
                                                "token_slots": 8, "padding_efficiency": 0.5}
    # An encoder-decoder model also runs its decoder over every label position.
    with_labels = batching.padding_stats([padded], count_labels=True)
    assert (with_labels["real_tokens"], with_labels["token_slots"]) == (7, 14)
    assert (with_labels["target_real_tokens"], with_labels["target_token_slots"]) == (3, 6)
    assert with_labels["input_padding_efficiency"] == with_labels["target_padding_efficiency"] == 0.5
    # Padding-free: three examples end to end, then two pad slots (pad_to_multiple_of).
    free = {"input_ids": torch.tensor([[5, 6, 7, 5, 6, 5, 0, 0]]),
            "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 0, 0]])}
    assert batching.padding_stats([free, free], pad_token_id=0) == {
        "examples": 6, "batches": 2, "real_tokens": 12, "token_slots": 16, "padding_efficiency": 0.75}


def test_training_padding_stats_leave_the_random_state_alone(cache, tmp_path):
    from datasets import Dataset
    from transformers import Trainer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "bert"))
    trainer = Trainer(model=tiny_classifier(cache, "bert"), args=training_args(tmp_path, per_device_train_batch_size=4),
                      train_dataset=Dataset.from_list(_random_rows(16, 3, 20, len(tok), labels=True)),
                      processing_class=tok, data_collator=batching.classification_collator(tok))
    state = torch.random.get_rng_state()
    stats = batching.training_padding_stats(trainer)
    assert torch.equal(state, torch.random.get_rng_state())  # the run's order is untouched
    assert stats["examples"] == 16 and stats["batches"] == 4


def test_train_token_summary_gives_the_record_fields(cache, tmp_path):
    from datasets import Dataset
    from transformers import Trainer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "bert"))
    rows = _random_rows(16, 3, 30, len(tok), labels=True)
    trainer = Trainer(model=tiny_classifier(cache, "bert"),
                      args=training_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=2,
                                         **batching.length_grouping()),
                      train_dataset=Dataset.from_list(rows), processing_class=tok,
                      data_collator=batching.classification_collator(tok))
    output = trainer.train()
    summary = batching.train_token_summary(trainer, output)
    assert summary["real_tokens"] == 2 * sum(len(r["input_ids"]) for r in rows)  # two epochs
    assert summary["real_tokens"] <= summary["token_slots"]
    assert summary["padding_efficiency"] == pytest.approx(summary["real_tokens"] / summary["token_slots"], abs=1e-3)
    assert summary["tokens_per_s"] == pytest.approx(summary["real_tokens"] / output.metrics["train_runtime"], rel=1e-2)


@pytest.mark.parametrize("ordered", [True, False])
def test_a_resumed_run_rates_only_the_tokens_of_the_steps_it_ran(cache, tmp_path, ordered):
    """After a resume, train_runtime covers the remaining steps only; so must the tokens/s. The
    steps run are counted exactly with `order_batches` (it notes the step the run began at), and
    from the Trainer's own rounded rate of steps without it."""
    from datasets import Dataset
    from transformers import Trainer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "bert"))
    rows = Dataset.from_list(_random_rows(16, 3, 30, len(tok), labels=True))

    def trainer():
        made = Trainer(model=tiny_classifier(cache, "bert"),
                       args=training_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=2,
                                          save_strategy="steps", save_steps=2, **batching.length_grouping()),
                       train_dataset=rows, processing_class=tok,
                       data_collator=batching.classification_collator(tok))
        return batching.order_batches(made) if ordered else made

    trainer().train()  # 8 steps, a checkpoint every 2
    resumed = trainer()
    output = resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoints" / "checkpoint-6"))  # 2 of 8 steps left
    if ordered:
        assert batching.steps_run(resumed, output) == 2
    else:
        assert batching.steps_run(resumed, output) == pytest.approx(2, rel=0.01)
    summary = batching.train_token_summary(resumed, output)
    assert summary["tokens_per_s"] == pytest.approx(
        summary["real_tokens"] * 2 / 8 / output.metrics["train_runtime"], rel=1e-2)


# --- predictions stay in the data's order ----------------------------------------------------------

def test_keep_eval_order_undoes_the_length_grouping_of_predict(cache, tmp_path):
    from datasets import Dataset
    from transformers import Trainer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "bert"))
    rows = _random_rows(40, 3, 40, len(tok), labels=True)
    test = Dataset.from_list(rows)

    def rows_as_predicted(keep):
        # predict() returns its outputs in the order of this dataloader.
        trainer = Trainer(model=tiny_classifier(cache, "bert"),
                          args=training_args(tmp_path, per_device_eval_batch_size=4, **batching.length_grouping()),
                          processing_class=tok, data_collator=batching.classification_collator(tok))
        if keep:
            batching.keep_eval_order(trainer)
        return [ids for batch in trainer.get_test_dataloader(test)
                for ids in _rows_of_padded_batch(batch, tok.pad_token_id)]

    in_order = [r["input_ids"] for r in rows]
    assert rows_as_predicted(keep=False) != in_order  # transformers length-groups predict() too
    assert rows_as_predicted(keep=True) == in_order


# --- the benchmark runs -----------------------------------------------------------------------------

def test_bench_runs_both_arms_on_the_same_examples(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--scale", "tiny", "--orders", "1", "--out", str(out)]) == 0
    results = {r["task"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"summarization", "sft"}
    n = bench.SCALES["tiny"].train_examples
    for task, result in results.items():
        original, project = result["arms"]["original"], result["arms"]["project"]
        assert original["examples"] == project["examples"] == n
        assert original["real_tokens"] == project["real_tokens"]  # same tokens, differently batched
        slots = n * (bench.MAX_LENGTH + (bench.MAX_TARGET_LENGTH if task == "summarization" else 0))
        assert original["token_slots"] == slots  # the original pads everything to the fixed length
        assert project["padding_efficiency"] > original["padding_efficiency"]
        for arm in (original, project):
            assert np.isfinite(arm["heldout_loss"]) and arm["wall_s"] > 0
        assert result["speedup_wall"] == pytest.approx(original["wall_s"] / project["wall_s"], rel=0.02)
    assert results["sft"]["arms"]["project"]["padding_efficiency"] == 1.0  # packed, no padding


def test_bench_lengths_follow_the_quoted_percentiles():
    rng = np.random.default_rng(0)
    for profile in (bench.SAMSUM_DIALOGUE, bench.GUANACO_ROW):
        lengths = profile.sample(20000, rng, cap=10**6)
        p10, median, p90 = np.percentile(lengths, [10, 50, 90])
        assert p10 == pytest.approx(profile.p10, rel=0.05)
        assert median == pytest.approx(profile.median, rel=0.05)
        assert p90 == pytest.approx(profile.p90, rel=0.05)


def test_length_grouped_order_depends_only_on_seed_and_epoch():
    lengths = [3, 30, 7, 12, 25, 9, 14, 2, 28, 17, 5, 21] * 4
    sampler = batching.EpochSeededLengthGroupedSampler(lengths, batch_size=4, seed=0)
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG has no say
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == sorted(second) == list(range(len(lengths)))  # every example once
    assert first != second  # a new order each epoch
    again = batching.EpochSeededLengthGroupedSampler(lengths, batch_size=4, seed=0)
    again.set_epoch(1)
    assert list(again) == second


def test_order_batches_trains_each_epoch_in_its_seeded_length_grouped_order(cache, tmp_path):
    """The trainer's own training loader (its collator, column removal and batch size), drawing
    the epoch-seeded length-grouped order: not the data's order, not transformers' own draw from
    the global random state, and a new order each epoch."""
    from datasets import Dataset
    from transformers import Trainer
    from transformers.trainer_pt_utils import get_length_grouped_indices

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "bert"))
    rows = _random_rows(24, 3, 30, len(tok), labels=True)
    trainer = batching.order_batches(Trainer(
        model=tiny_classifier(cache, "bert"),
        args=training_args(tmp_path, per_device_train_batch_size=4, seed=7, **batching.length_grouping()),
        train_dataset=Dataset.from_list(rows), processing_class=tok,
        data_collator=batching.classification_collator(tok)))
    lengths = [len(r["input_ids"]) for r in rows]
    loader = trainer.get_train_dataloader()
    for epoch in (0, 1):
        loader.set_epoch(epoch)  # as the Trainer does at the start of each epoch
        torch.manual_seed(123 + epoch)  # the global random state has no say
        drawn = [ids for batch in loader for ids in _rows_of_padded_batch(batch, tok.pad_token_id)]
        order = get_length_grouped_indices(lengths, 4, generator=torch.Generator().manual_seed(7 + epoch))
        assert drawn == [rows[i]["input_ids"] for i in order], epoch
    assert order != list(range(len(rows)))


def test_a_run_resumed_mid_epoch_trains_on_the_same_batches(cache, tmp_path):
    """Killed in the middle of the second epoch and resumed: the same final weights. With
    transformers' own length-grouped sampler the resumed epoch would be reshuffled from the
    checkpoint's RNG state, and the weights would differ."""
    from datasets import Dataset
    from transformers import Trainer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "bert"))
    rows = Dataset.from_list(_random_rows(24, 3, 30, len(tok), labels=True))

    def trainer(folder):
        torch.manual_seed(0)
        return batching.order_batches(Trainer(
            model=tiny_classifier(cache, "bert"),
            args=training_args(folder, per_device_train_batch_size=4, num_train_epochs=3,
                               save_strategy="steps", save_steps=8, **batching.length_grouping()),
            train_dataset=rows, processing_class=tok, data_collator=batching.classification_collator(tok)))

    whole = trainer(tmp_path / "whole")
    whole.train()  # 18 steps; checkpoint-8 lies in the middle of the second epoch
    resumed = trainer(tmp_path / "whole")
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoints" / "checkpoint-8"))
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_eval_batch_size_lets_each_process_fill_a_batch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert batching.eval_batch_size(32, range(16)) == 32  # one process: as asked
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert batching.eval_batch_size(32, range(16), range(40)) == 8  # the smaller split, halved
    assert batching.eval_batch_size(4, range(16)) == 4
    assert batching.eval_batch_size(32, range(1)) == 1
