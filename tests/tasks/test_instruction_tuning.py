"""Instruction tuning: data formats, the EOS/pad/BOS handling, completion-only masking, honest
perplexity, QLoRA on a CPU, merging, and the notebook end to end on the tiny Llama.

The EOS/pad/BOS tests run TRL's own dataset preparation (the SFTTrainer the notebook builds) on
the tiny Llama, whose tokenizer behaves like Llama-2's: BOS added, no pad token, no template.
"""

import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import ROOT
from nbutils.tasks.instruction_tuning import causal_lm, instructions
from tests import fixtures
from tools import runner
from nbutils import lora
from nbutils.run import record, row_report
from nbutils.tasks.instruction_tuning.instructions import InstructionDataError
from tests.fixtures.samples import instructions as sample

MAX_LENGTH = 192  # the smoke profile's


# --- sample data -------------------------------------------------------------------------------

def test_sample_files_are_deterministic(tmp_path):
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for write in (sample.write_guanaco_jsonl, sample.write_chat_jsonl):
        a, b, c = (write(tmp_path / f"{write.__name__}{s}.jsonl", seed=seed)
                   for s, seed in (("a", 0), ("b", 0), ("c", 1)))
        assert digest(a) == digest(b) != digest(c)
        assert a.stat().st_size < 1_000_000


def test_text_sample_has_guanaco_llama2_schema():
    rows = sample.text_rows()
    assert all(list(row) == ["text"] for row in rows)
    for row in rows:
        assert row["text"].startswith("<s>[INST] ") and row["text"].endswith(" </s>")
        assert row["text"].count("<s>[INST] ") == row["text"].count(" [/INST] ") == row["text"].count(" </s>")
    multi_turn = sum(row["text"].count("[INST]") > 1 for row in rows)
    assert 0.03 < multi_turn / len(rows) < 0.2, "about one in ten with a second turn, as in guanaco"
    assert len({row["text"] for row in rows}) == len(rows), "no duplicates to leak into the held-out split"


def test_chat_sample_has_capybara_schema_and_valid_conversations():
    rows = sample.chat_rows()
    assert all(list(row) == ["source", "messages", "num_turns"] for row in rows)
    for i, row in enumerate(rows):
        instructions.check_messages(row["messages"], i)
    assert any(row["messages"][0]["role"] == "system" for row in rows)
    assert any(row["num_turns"] == 4 for row in rows)


def test_answers_are_learnable_from_questions():
    """The short questions have one right answer, written in the answer."""
    checked = 0
    for row in sample.text_rows():
        for country, city in sample._CAPITALS.items():
            if f"capital of {country}?" in row["text"] or f"capital city of {country}." in row["text"]:
                answer = row["text"].split("[/INST]")[1]
                assert f"The capital of {country} is {city}." in answer
                checked += 1
    assert checked >= 10


def test_sample_lengths_have_the_real_long_right_tail(cache):
    """In tiny-Llama tokens: guanaco's shape (p10 about a third of the median, p90 about 2.5x,
    a long tail) and a share of examples that max_length cuts."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "llama"))
    lengths = np.array([len(tok(row["text"], add_special_tokens=False)["input_ids"])
                        for row in sample.text_rows()])
    p10, median, p90 = np.percentile(lengths, [10, 50, 90])
    assert p10 < 0.5 * median and p90 > 2 * median and lengths.max() > 5 * median
    assert 0.1 < (lengths > MAX_LENGTH).mean() < 0.4
    assert (lengths > 3 * MAX_LENGTH).any(), "a few are far too long, as in the real data"


def test_sample_texts_feed_the_tokenizer_corpus(cache):
    from transformers import AutoTokenizer

    from tests.fixtures import samples

    assert set(sample.texts()) <= set(samples.corpus(0))
    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "llama"))
    ids = tok("Explain photosynthesis in simple terms.")["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) < 20


# --- formats and conversion --------------------------------------------------------------------

def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_llama2_template_writes_back_the_exact_guanaco_text(cache):
    """Parsing each sample row and rendering it with the llama2 chat template gives the row's
    text back, character for character: the conversion loses nothing, adds nothing."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "llama"))
    instructions.set_chat_template(tok, "llama2")
    for i, row in enumerate(sample.text_rows()):
        messages = instructions.parse_llama2_text(row["text"], i)
        assert tok.apply_chat_template(messages, tokenize=False) == row["text"]


def test_system_prompt_round_trips():
    text = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi? [/INST] Hello. </s><s>[INST] Bye? [/INST] Bye. </s>"
    messages = instructions.parse_llama2_text(text, 0)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "Be brief." and messages[1]["content"] == "Hi?"
    assert messages[2]["content"] == "Hello."


def test_three_formats_give_one_representation():
    conversation = [{"role": "user", "content": "What is the capital of Peru?"},
                    {"role": "assistant", "content": "The capital of Peru is Lima."}]
    tables = {
        "text": _dataset([{"text": "<s>[INST] What is the capital of Peru? [/INST] "
                                   "The capital of Peru is Lima. </s>"}]),
        "prompt_completion": _dataset([{"prompt": "What is the capital of Peru?",
                                        "completion": "The capital of Peru is Lima."}]),
        "messages": _dataset([{"messages": conversation}]),
    }
    for fmt, table in tables.items():
        assert instructions.detect_format(table.column_names) == fmt
        pairs, skipped = instructions.to_prompt_completion(table, fmt)
        assert not skipped
        assert pairs[0] == {"prompt": conversation[:1], "completion": conversation[1:]}, fmt


def test_multi_turn_prompt_holds_the_earlier_turns():
    text = "<s>[INST] Q1 [/INST] A1 </s><s>[INST] Q2 [/INST] A2 </s>"
    pair = instructions.split_prompt_completion(instructions.parse_llama2_text(text, 0))
    assert [m["content"] for m in pair["prompt"]] == ["Q1", "A1", "Q2"]
    assert pair["completion"] == [{"role": "assistant", "content": "A2"}]


def test_format_and_column_errors_name_the_columns():
    with pytest.raises(InstructionDataError, match="found no instruction columns.*columns present: question, answer"):
        instructions.detect_format(["question", "answer"])
    with pytest.raises(InstructionDataError, match="needs messages_column='messages'.*columns present: text"):
        instructions.detect_format(["text"], "messages")
    with pytest.raises(InstructionDataError, match="data_format must be auto or one of"):
        instructions.detect_format(["text"], "sharegpt")
    assert instructions.detect_format(["q", "a"], "prompt_completion", prompt_column="q",
                                      completion_column="a") == "prompt_completion"


# Bad rows: each is a clear error naming the row (the second row, index 1).
BAD_ROWS = [
    ("text", {"text": "Hello, how are you? I am fine."}, r"row 1: no \[INST\] \.\.\. \[/INST\] markers"),
    ("text", {"text": "<s>[INST] What is 2 + 2? [/INST] </s>"}, r"row 1: empty completion"),
    ("text", {"text": "<s>[INST] What is 2 + 2? [/INST]"}, r"row 1: empty completion"),
    ("text", {"text": "<s>[INST] [/INST] Four. </s>"}, r"row 1: empty question"),
    ("text", {"text": "Question: <s>[INST] q [/INST] a </s>"}, r"row 1: text before the first \[INST\]"),
    ("prompt_completion", {"prompt": "What is 2 + 2?", "completion": "  "},
     r"row 1: empty completion in column 'completion'"),
    ("messages", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
     r"row 1: empty completion: the last assistant message is empty"),
    ("messages", {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]},
     r"row 1: message 1 has unknown role 'bot'; expected one of system, user, assistant"),
    ("messages", {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello"}]},
     r"row 1: message 1 is 'user' where 'assistant' was expected"),
    ("messages", {"messages": [{"role": "user", "content": "Hi"}]},
     r"row 1: the last message must be the assistant's answer"),
]
GOOD_ROW = {"text": {"text": "<s>[INST] Hi [/INST] Hello </s>"},
            "prompt_completion": {"prompt": "Hi", "completion": "Hello"},
            "messages": {"messages": [{"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Hello"}]}}


@pytest.mark.parametrize("fmt, bad, message", BAD_ROWS, ids=[m for _, _, m in BAD_ROWS])
def test_bad_row_is_a_clear_error_naming_the_row(fmt, bad, message):
    table = _dataset([GOOD_ROW[fmt], bad, GOOD_ROW[fmt]])
    with pytest.raises(InstructionDataError, match=message) as err:
        instructions.to_prompt_completion(table, fmt)
    assert "row_report.RowLedger" in str(err.value)
    pairs, skipped = instructions.to_prompt_completion(table, fmt, skip_invalid=True)
    assert len(pairs) == 2 and [index for index, _ in skipped] == [1]


def test_no_valid_rows_is_an_error():
    with pytest.raises(InstructionDataError, match="no valid rows left: row 0: no \\[INST\\]"):
        instructions.to_prompt_completion(_dataset([{"text": "plain text"}]), "text", skip_invalid=True)


def test_chat_template_choices(cache, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "llama"))
    with pytest.raises(ValueError, match="chat_template='' keeps the tokenizer's own chat template, but this tokenizer has none"):
        instructions.set_chat_template(tok, "")
    with pytest.raises(ValueError, match="chat_template must be empty.*got 'chatml'"):
        instructions.set_chat_template(tok, "chatml")
    with pytest.raises(FileNotFoundError, match="chat template file not found"):
        instructions.set_chat_template(tok, str(tmp_path / "missing.jinja"))
    (tmp_path / "t.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    instructions.set_chat_template(tok, str(tmp_path / "t.jinja"))
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "x"
    assert instructions.set_chat_template(tok, "") == "the tokenizer's own"


# --- pad token ---------------------------------------------------------------------------------

def _tiny(cache, quantized=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = fixtures.tiny_model_dir(cache, "llama")
    tok = AutoTokenizer.from_pretrained(path)
    instructions.set_chat_template(tok, "llama2")
    kwargs = {"quantization_config": lora.bnb_4bit_config()} if quantized else {}
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)
    if quantized:
        lora.keep_4bit_training_layout(model)
    return tok, model


def test_pad_token_is_added_distinct_from_eos(cache):
    tok, model = _tiny(cache)
    assert tok.pad_token is None  # like Llama-2
    vocab = len(tok)
    info = causal_lm.ensure_pad_token(tok, model)
    assert info["added"] and info["resized_embeddings"] and tok.pad_token == "<pad>"
    assert tok.pad_token_id == vocab != tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == model.get_output_embeddings().weight.shape[0] == vocab + 1
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id


def test_existing_token_pads_without_resizing(cache):
    tok, model = _tiny(cache)
    info = causal_lm.ensure_pad_token(tok, model, "<unk>")
    assert not info["added"] and not info["resized_embeddings"]
    assert tok.pad_token_id == tok.unk_token_id != tok.eos_token_id


def test_pad_equal_to_eos_is_replaced_or_refused(cache):
    tok, model = _tiny(cache)
    tok.pad_token = tok.eos_token  # the original notebook's setting
    causal_lm.ensure_pad_token(tok, model)
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    with pytest.raises(ValueError, match="pad_token='</s>' is the EOS token"):
        causal_lm.ensure_pad_token(tok, model, "</s>")


# --- what TRL trains on: BOS, completion-only labels, EOS ---------------------------------------

def _pairs(n=None, path="guanaco_llama2_1k.jsonl", fmt="text"):
    from nbutils import data

    table = data.load_table(str(ROOT / ".cache" / "sample-data" / path))
    from nbutils.run.row_report import RowLedger

    # The sample has the real set's malformed rows: the notebook's rule repairs or drops them.
    pairs, _ = instructions.to_prompt_completion(table if n is None else table.select(range(n)), fmt,
                                                 ledger=RowLedger())
    return pairs


def _trainer(tok, model, pairs, tmp_path, peft=True, **overrides):
    from trl import SFTConfig, SFTTrainer

    settings = dict(output_dir=str(tmp_path / "out"), max_length=MAX_LENGTH, activation_checkpointing=False,
                    report_to="none", bf16=False, fp16=False, dataloader_pin_memory=False,
                    save_strategy="no", disable_tqdm=True, optim="adamw_torch")
    settings.update(overrides)
    return SFTTrainer(model=model, args=SFTConfig(**settings), train_dataset=pairs, processing_class=tok,
                      peft_config=lora.causal_lm_lora_config(4, 8, 0.0, ["all-linear"]) if peft else None)


@pytest.mark.parametrize("source, fmt", [("guanaco_llama2_1k.jsonl", "text"), ("chat_messages.jsonl", "messages")])
def test_training_examples_have_one_bos_masked_prompt_and_end_in_eos(cache, tmp_path, source, fmt):
    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    pairs = _pairs(path=source, fmt=fmt)
    lengths, prompt_lengths = causal_lm.sequence_lengths(tok, pairs)
    report = row_report.length_report(lengths, MAX_LENGTH, prompt_lengths)
    prepared = _trainer(tok, model, pairs, tmp_path).train_dataset
    # TRL drops the examples whose prompt alone fills max_length (no answer token left).
    kept = [i for i, n in enumerate(prompt_lengths) if n < MAX_LENGTH]
    assert len(prepared) == len(kept) == report["examples"] - report["prompt_fills_max_length"]
    not_ending_in_eos = 0
    for row, i in zip(prepared, kept):
        ids, labels, pair = row["input_ids"], row["labels"], pairs[i]
        # One BOS per turn (Llama-2's format), the first at position 0: never two in a row.
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
        assert ids.count(tok.bos_token_id) == sum(m["role"] == "user" for m in pair["prompt"])
        assert tok.pad_token_id not in ids
        # The prompt is masked; every completion token is a label.
        n_prompt = prompt_lengths[i]
        assert all(label == -100 for label in labels[:n_prompt])
        assert labels[n_prompt:] == ids[n_prompt:] and len(labels[n_prompt:]) > 0
        if lengths[i] <= MAX_LENGTH:
            assert len(ids) == lengths[i]
            assert labels[-1] == tok.eos_token_id, "the model must be trained to stop"
            # Earlier turns' EOS tokens sit in the masked prompt: the answer's is the only label.
            assert [label for label in labels if label != -100].count(tok.eos_token_id) == 1
        else:
            assert len(ids) == MAX_LENGTH
            not_ending_in_eos += labels[-1] != tok.eos_token_id
    # Exactly the examples the length report counts as cut lose their EOS.
    assert not_ending_in_eos == report["truncated"] - report["prompt_fills_max_length"] > 0


def test_sequence_lengths_match_what_trl_tokenizes(cache, tmp_path):
    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    pairs = _pairs(60)
    lengths, _ = causal_lm.sequence_lengths(tok, pairs)
    prepared = _trainer(tok, model, pairs, tmp_path, max_length=None).train_dataset
    assert [len(ids) for ids in prepared["input_ids"]] == lengths.tolist()


def test_padding_uses_the_pad_token_and_keeps_the_eos_label(cache, tmp_path):
    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    trainer = _trainer(tok, model, _pairs(8), tmp_path)
    rows = [trainer.train_dataset[i] for i in range(2)]
    short, long_ = sorted(rows, key=lambda r: len(r["input_ids"]))
    batch = trainer.data_collator([short, long_])
    n = len(short["input_ids"])
    assert batch["input_ids"].shape[1] == len(long_["input_ids"]) > n
    assert (batch["input_ids"][0, n:] == tok.pad_token_id).all()
    assert (batch["labels"][0, n:] == -100).all() and (batch["attention_mask"][0, n:] == 0).all()
    assert batch["labels"][0, n - 1] == tok.eos_token_id, "padding must not mask the real EOS"


def test_completion_only_loss_can_be_turned_off(cache, tmp_path):
    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    prepared = _trainer(tok, model, _pairs(20), tmp_path, completion_only_loss=False).train_dataset
    for row in prepared:
        assert row["labels"] == row["input_ids"]


# --- the loss on every assistant turn (loss_on) ------------------------------------------------

TWO_TURNS = [{"role": "user", "content": "What is the capital of Peru?"},
             {"role": "assistant", "content": "Lima is the capital."},
             {"role": "user", "content": "And of Chile?"},
             {"role": "assistant", "content": "Santiago is."}]


def _targets(tok, example):
    """The target tokens of a labelled example, decoded, and the runs of consecutive targets."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(run) for run in runs]


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_every_assistant_turn_is_a_target_and_no_user_turn(cache, model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, model))
    if model == "llama":
        instructions.set_chat_template(tok, "llama2")  # Llama-2's [INST] format; the Qwen2 keeps its ChatML
    every = causal_lm.turn_labels(tok, TWO_TURNS, "all_assistant_turns")
    last = causal_lm.turn_labels(tok, TWO_TURNS, "last_assistant_turn")
    assert every["input_ids"] == last["input_ids"] == tok.apply_chat_template(
        TWO_TURNS, tokenize=True, return_dict=True)["input_ids"]
    # Both answers are targets, each with its end-of-turn token (</s>, or <|im_end|>), and only
    # they: no token of the questions, the [INST] markers or the role headers.
    answers = _targets(tok, every)
    assert len(answers) == 2
    for answer, text in zip(answers, ("Lima is the capital.", "Santiago is.")):
        assert text in answer and tok.eos_token in answer
        assert "Peru" not in answer and "Chile" not in answer and "[INST]" not in answer and "user" not in answer
    # The last-turn option: the second answer alone, exactly as in the all-turns labels.
    assert _targets(tok, last) == answers[1:]
    eos = [i for i, label in enumerate(every["labels"]) if label == tok.eos_token_id]
    assert len(eos) == 2 and [i for i, label in enumerate(last["labels"]) if label == tok.eos_token_id] == eos[1:]
    # completion_only=False: every token, as TRL's completion_only_loss=False.
    assert causal_lm.turn_labels(tok, TWO_TURNS, completion_only=False)["labels"] == every["input_ids"]
    with pytest.raises(ValueError, match="loss_on must be one of all_assistant_turns, last_assistant_turn"):
        causal_lm.turn_labels(tok, TWO_TURNS, "all_turns")


def test_last_turn_labels_are_trls_completion_only_labels(cache, tmp_path):
    """`last_assistant_turn` reproduces what TRL's SFTTrainer makes of a prompt/completion row
    (the old recipe), on the guanaco sample's multi-turn rows too; `all_assistant_turns` has the
    same tokens, with the earlier answers' as targets as well."""
    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    pairs = _pairs(40)
    assert any(len(row["prompt"]) > 1 for row in pairs), "the sample has multi-turn rows"
    trl_rows = _trainer(tok, model, pairs, tmp_path, max_length=None).train_dataset
    last = causal_lm.label_conversations(tok, pairs, "last_assistant_turn")
    every = causal_lm.label_conversations(tok, pairs, "all_assistant_turns")
    assert last["input_ids"] == every["input_ids"] == trl_rows["input_ids"]
    assert last["labels"] == trl_rows["labels"]
    more = 0
    for row, a, b in zip(pairs, every["labels"], last["labels"]):
        targets_every, targets_last = sum(x != -100 for x in a), sum(x != -100 for x in b)
        answers = 1 + sum(m["role"] == "assistant" for m in row["prompt"])
        assert a.count(tok.eos_token_id) == answers  # every answer's EOS is a target
        assert (targets_every > targets_last) == (answers > 1)
        more += answers > 1
    assert more > 0
    # max_length cuts each example, keeping its start, as the trainer cuts its own.
    cut = causal_lm.label_conversations(tok, pairs, max_length=32)
    assert cut["input_ids"] == [ids[:32] for ids in every["input_ids"]]


def test_the_trainer_keeps_the_all_turn_labels(cache, tmp_path):
    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    every = causal_lm.label_conversations(tok, _pairs(20), "all_assistant_turns")
    prepared = _trainer(tok, model, every, tmp_path, max_length=None).train_dataset
    assert prepared["labels"] == every["labels"]


def test_packed_sequences_keep_each_examples_eos(cache, tmp_path):
    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    pairs = _pairs(40)
    lengths, _ = causal_lm.sequence_lengths(tok, pairs)
    prepared = _trainer(tok, model, pairs, tmp_path, packing=True).train_dataset
    assert len(prepared) < len(pairs)
    ends_in_eos = 0
    for row in prepared:
        assert len(row["input_ids"]) <= MAX_LENGTH and sum(row["seq_lengths"]) == len(row["input_ids"])
        end = 0
        for n in row["seq_lengths"]:
            end += n
            ends_in_eos += row["labels"][end - 1] == tok.eos_token_id
    assert ends_in_eos == int((lengths <= MAX_LENGTH).sum())
    # The notebook's and label_checks' reading of packed rows gives the same examples.
    examples = list(causal_lm.training_examples(prepared))
    assert len(examples) == sum(len(row["seq_lengths"]) for row in prepared)
    assert sum(labels[-1] == tok.eos_token_id for _, labels in examples) == ends_in_eos
    assert causal_lm.label_checks(prepared, tok)["examples"] == len(examples)


# --- the model learns to stop --------------------------------------------------------------------

ONE_EXAMPLE = {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
               "completion": [{"role": "assistant", "content": "The capital of France is Paris."}]}


def _overfit(tok, model, train_dataset, tmp_path, **kwargs):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "fit"), num_train_epochs=40, learning_rate=3e-2,
                             per_device_train_batch_size=4, report_to="none", save_strategy="no",
                             disable_tqdm=True, dataloader_pin_memory=False, seed=0, use_cpu=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's ops are too small to split; more threads only contend
    try:
        Trainer(model=model, args=args, train_dataset=train_dataset, **kwargs).train()
    finally:
        torch.set_num_threads(threads)


def test_trained_model_stops_at_eos(cache, tmp_path):
    """Trained (fully, to memorize) on one example prepared as the notebook prepares it, the
    tiny model answers it and stops at EOS, long before max_new_tokens."""
    from datasets import Dataset

    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    trainer = _trainer(tok, model, Dataset.from_list([ONE_EXAMPLE] * 8), tmp_path, peft=False)
    _overfit(tok, model, trainer.train_dataset.select_columns(["input_ids", "labels"]), tmp_path,
             data_collator=trainer.data_collator)
    result = causal_lm.generate(model, tok, ONE_EXAMPLE["prompt"], max_new_tokens=40)
    assert result["stopped"] and result["new_tokens"] < 20
    assert result["answer"] == "The capital of France is Paris."


def test_pad_as_eos_with_a_padding_masking_collator_never_learns_to_stop(cache, tmp_path):
    """The original notebooks' bug, reproduced: pad = EOS and a collator that masks padding
    (transformers' language-modeling collator) masks every EOS label too, so the same training
    never teaches the model to stop."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling

    tok, model = _tiny(cache)
    tok.pad_token = tok.eos_token
    text = tok.apply_chat_template(ONE_EXAMPLE["prompt"] + ONE_EXAMPLE["completion"], tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    assert collator([{"input_ids": ids}])["labels"][0, -1] == -100, "the EOS label is masked"
    _overfit(tok, model, Dataset.from_list([{"input_ids": ids}] * 8), tmp_path, data_collator=collator)
    result = causal_lm.generate(model, tok, ONE_EXAMPLE["prompt"], max_new_tokens=40)
    assert result["answer"].startswith("The capital of France is Paris.")
    assert not result["stopped"] and result["new_tokens"] == 40


def test_generate_stops_at_any_configured_stop_token(cache):
    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("▁the")]
    assert causal_lm.stop_token_ids(tok, model) == [tok.eos_token_id, tok.convert_tokens_to_ids("▁the")]
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        causal_lm.generate(model, tok, ONE_EXAMPLE["prompt"], 0)


# --- held-out loss and perplexity ----------------------------------------------------------------

def test_token_loss_is_the_exact_mean_over_answer_tokens(cache, tmp_path):
    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    trainer = _trainer(tok, model, _pairs(6), tmp_path, peft=False)
    rows = trainer.train_dataset
    scores = causal_lm.token_loss(model, rows, tok.pad_token_id, batch_size=4)
    # Reference: each example alone through the model's own loss (mean over its label tokens),
    # weighted by its number of predicted tokens.
    total = count = 0
    for row in rows:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
        n = sum(label != -100 for label in row["labels"][1:])
        total, count = total + out.loss.item() * n, count + n
    assert scores["tokens"] == count
    assert scores["loss"] == pytest.approx(total / count, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    # Padding never leaks into the score: one example per batch gives the same numbers.
    assert causal_lm.token_loss(model, rows, tok.pad_token_id, batch_size=1)["loss"] == \
        pytest.approx(scores["loss"], rel=1e-5)


def test_token_loss_keeps_each_examples_sum_and_the_interval_resamples_examples(cache, tmp_path):
    from nbutils.tasks import instruction_tuning

    tok, model = _tiny(cache)
    causal_lm.ensure_pad_token(tok, model)
    rows = causal_lm.label_conversations(tok, _pairs(12), "all_assistant_turns")
    scores = causal_lm.token_loss(model, rows, tok.pad_token_id, batch_size=5, chunk_tokens=7)
    losses, tokens = scores["example_losses"], scores["example_tokens"]
    assert len(losses) == len(tokens) == len(rows) and tokens.sum() == scores["tokens"]
    assert losses.sum() / tokens.sum() == pytest.approx(scores["loss"], rel=1e-9)
    # Each example's sum is its own loss times its own predicted targets, scored alone.
    for i in (0, 7):
        row = rows[i]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
        n = sum(label != -100 for label in row["labels"][1:])
        assert tokens[i] == n and losses[i] == pytest.approx(out.loss.item() * n, rel=1e-5)
    intervals = causal_lm.loss_intervals(scores)
    # The bootstrap redraws whole examples and pools their token sums: the same resamples by hand.
    draws = np.random.default_rng(0).integers(0, len(rows), size=(1000, len(rows)))
    pooled = losses[draws].sum(axis=1) / tokens[draws].sum(axis=1)
    low, high = np.percentile(pooled, [2.5, 97.5])
    assert (intervals["eval_loss"]["low"], intervals["eval_loss"]["high"]) == pytest.approx((low, high))
    assert intervals["eval_perplexity"]["low"] == pytest.approx(math.exp(low))
    assert intervals["eval_perplexity"]["high"] == pytest.approx(math.exp(high))
    assert intervals["eval_loss"]["low"] < scores["loss"] < intervals["eval_loss"]["high"]
    # The record's metrics: the interval of the headline, and only real results named with their split.
    metrics = instruction_tuning.held_out_metrics(scores, intervals)
    record.check_metrics(metrics, "eval_perplexity")
    assert metrics["measured_on"] == {"eval_loss": "held-out slice of train",
                                      "eval_perplexity": "held-out slice of train"}
    assert metrics["eval_tokens"] == scores["tokens"] and "example_losses" not in metrics


def test_the_chosen_checkpoint_is_read_from_the_trainer_state():
    from types import SimpleNamespace

    from nbutils.tasks import instruction_tuning

    state = SimpleNamespace(best_model_checkpoint="/x/checkpoints/checkpoint-40", best_metric=1.25, global_step=60,
                            log_history=[{"loss": 2.0, "step": 10}, {"eval_loss": 1.5, "step": 20},
                                         {"eval_loss": 1.25, "step": 40}, {"eval_loss": 1.3, "step": 60}])
    assert instruction_tuning.chosen_checkpoint(state) == {
        "criterion": "validation loss (lowest)", "step": 40, "validation_loss": 1.25, "last_step": 60, "evaluations": 3}


def test_length_report_counts_what_max_length_cuts():
    report = row_report.length_report([10, 20, 30, 40, 250], 30, prompt_lengths=[5, 5, 5, 5, 200])
    assert report["truncated"] == 2 and report["truncated_fraction"] == pytest.approx(0.4)
    assert report["prompt_fills_max_length"] == 1 and report["tokens_cut"] == 10 + 220
    assert report["median"] == 30 and report["max"] == 250


# --- QLoRA on a CPU, LoRA settings, merging ------------------------------------------------------

def test_qlora_loads_4bit_nf4_on_cpu_and_trains_through_it(cache, tmp_path):
    """bitsandbytes 0.50 quantizes and runs the tiny Llama in 4 bits on a CPU: NF4 with double
    quantization, logits close to the fp32 model's, and after an evaluation in eval mode (which
    would repack the weights for inference) gradients still reach the first layer's adapter."""
    import bitsandbytes as bnb

    tok, full = _tiny(cache)
    _, model = _tiny(cache, quantized=True)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7
    state = layers[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested, "NF4 with double quantization"
    x = torch.tensor([tok("What is the capital of Peru?")["input_ids"]])
    with torch.no_grad():
        a, b = full(x).logits.flatten(), model(x).logits.flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95
    causal_lm.ensure_pad_token(tok, model, "<unk>")
    trainer = _trainer(tok, model, _pairs(8), tmp_path)
    assert lora.trainable_to_float32(trainer.model) > 0
    causal_lm.token_loss(trainer.model, trainer.train_dataset, tok.pad_token_id)  # eval mode
    trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model(**batch).loss.backward()
    # lora_B starts at zero, so lora_A gets no gradient yet; lora_B of the first layer gets one
    # only through the backward pass of every 4-bit layer above it.
    first = trainer.model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_lora_config_from_parameters():
    config = lora.causal_lm_lora_config(64, 16, 0.1, ["q_proj", "v_proj"])
    assert (config.r, config.lora_alpha, config.lora_dropout) == (64, 16, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"} and config.task_type == "CAUSAL_LM"
    assert config.modules_to_save is None
    assert lora.causal_lm_lora_config(8, 16, 0.0, ["all-linear"], ["lm_head"]).target_modules == "all-linear"
    with pytest.raises(ValueError, match="lora_r must be a positive rank"):
        lora.causal_lm_lora_config(0, 16, 0.1, ["q_proj"])
    with pytest.raises(ValueError, match="lora_target_modules must be a list"):
        lora.causal_lm_lora_config(8, 16, 0.1, [])
    with pytest.raises(ValueError, match="bnb_4bit_quant_type must be one of nf4, fp4"):
        lora.bnb_4bit_config("int4")


def test_merged_model_matches_the_adapter(cache, tmp_path):
    """Save an adapter (with a new pad token's embedding rows), merge it into the base, reload
    the merged model alone: same logits as base + adapter."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    tok, model = _tiny(cache)
    info = causal_lm.ensure_pad_token(tok, model)
    peft_model = get_peft_model(model, lora.causal_lm_lora_config(4, 8, 0.0, ["all-linear"]))
    with torch.no_grad():  # a non-zero update, as after training
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter", save_embedding_layers=info["resized_embeddings"])
    merged_dir = lora.merge_adapter_and_save(str(fixtures.tiny_model_dir(cache, "llama")),
                                             tmp_path / "adapter", tmp_path / "merged", tok)
    assert (merged_dir / "model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True)
    assert merged.config.pad_token_id == tok.pad_token_id
    x = torch.tensor([tok("What is the capital of Peru?")["input_ids"] + [tok.pad_token_id]])
    with torch.no_grad():
        expected, got = peft_model(x).logits, merged(x).logits
    assert torch.allclose(expected, got, atol=1e-4)
    with peft_model.disable_adapter(), torch.no_grad():
        assert not torch.allclose(peft_model(x).logits, got, atol=1e-3), "the merge changed the weights"


# --- the notebook end to end ---------------------------------------------------------------------

VARIANTS = ("llama2_7b", "qwen2_5_0_5b_instruct")


@pytest.fixture(scope="module")
def runs(smoke_run):
    return smoke_run("instruction_tune")  # (runner exit code, outputs/smoke folder)


def test_both_variants_run(runs):
    code, folder = runs
    statuses = {v: (folder / "instruction_tune" / v / "metrics.json").is_file() for v in VARIANTS}
    assert code == 0 and all(statuses.values()), statuses


@pytest.mark.parametrize("variant", VARIANTS)
def test_run_record_and_held_out_scores(runs, variant):
    rec = record.read_record(runs[1] / "instruction_tune" / variant)
    assert tuple(rec) == record.RECORD_FIELDS and rec["project"] == f"instruction_tune/{variant}"
    assert rec["task"] == "instruction-tuning" and rec["primary_metric"] == "eval_perplexity"
    before, after = rec["baselines"]["before_training"], rec["metrics"]
    for scores in (before, after):
        assert scores["eval_perplexity"] == pytest.approx(math.exp(scores["eval_loss"]))
        assert 0 <= scores["stop_rate"] <= 1
    assert before["eval_tokens"] == after["eval_tokens"] > 0, "the same held-out answers, scored twice"
    # Random tiny weights start near uniform (perplexity about the vocabulary size: 1,256 for the
    # tiny Llama, 1,000 for the tiny Qwen2); training must cut that several times over.
    vocabulary = json.loads((ROOT / rec["model"] / "config.json").read_text())["vocab_size"]
    assert before["eval_perplexity"] > 0.8 * vocabulary
    assert after["eval_perplexity"] < before["eval_perplexity"] / 3
    data = rec["data"]
    assert data["test"] > 0 and data["train"] > 5 * data["test"]
    # The guanaco sample's malformed rows: three empty trailing turns repaired, one row dropped
    # (the chat-messages sample has none).
    dropped = 1 if variant == "llama2_7b" else 0
    assert data["skipped_rows"] == data["report"]["rows"]["dropped"] == dropped
    assert data["lengths"]["limit"] == MAX_LENGTH and data["lengths"]["truncated"] > 0
    checks = data["label_checks"]
    # Every example that fits ends with its EOS as a target; with the loss on every assistant
    # turn, a multi-turn example that max_length cuts still has its earlier answers' EOS.
    fitting = data["lengths"]["examples"] - data["lengths"]["truncated"]
    assert fitting <= checks["labels_with_stop_token"] <= data["lengths"]["examples"]
    assert 0.05 < checks["masked_label_fraction"] < 0.6, "the prompts are masked, the answers are not"
    assert 0 < rec["parameters"]["trainable"] < rec["parameters"]["total"]
    # The memory estimate printed before loading counted, from the config alone, the adapter
    # trained: exactly, up to the rows of a pad token added after loading (the config knows the
    # vocabulary before it grows; the chat variant trains its output layer, lora_modules_to_save:
    # 48,928 against 48,896 estimated, one row of hidden size 32).
    estimated = rec["train"]["memory_estimate"]["parameters"]["trainable"]
    assert 0 <= rec["parameters"]["trainable"] - estimated <= 0.001 * rec["parameters"]["trainable"]


def test_qlora_and_lora_variants_load_as_asked(runs):
    import nbformat

    outputs = {}
    for variant in VARIANTS:
        nb = nbformat.read(runs[1] / "instruction_tune" / variant / "instruction_tune.ipynb", as_version=4)
        outputs[variant] = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                                   for o in c.outputs)
    assert "LlamaForCausalLM, 4-bit nf4" in outputs["llama2_7b"]
    assert "pad token '<unk>' (id 0, added: False)" in outputs["llama2_7b"]
    # The tiny Qwen2 keeps its own ChatML template and pad token, as Qwen2.5-Instruct does.
    qwen = outputs["qwen2_5_0_5b_instruct"]
    assert "chat template: the tokenizer's own; BOS None, EOS '<|im_end|>', pad '<|endoftext|>'" in qwen
    assert "Qwen2ForCausalLM, torch.float32; pad token '<|endoftext|>' (id 0, added: False)" in qwen
    # ChatML closes the answer with <|im_end|> and a newline: both are labels, the EOS among them.
    assert "<|im_end|> Ċ\n" in qwen and "last label: 'Ċ' (EOS: False)" in qwen
    assert "last label: '</s>' (EOS: True)" in outputs["llama2_7b"]
    for variant, text in outputs.items():
        # Every training example starts with one BOS, and exactly those that fit have EOS.
        found = re.search(r"(\d+) training examples: (\d+) start with exactly one BOS; (\d+) have a "
                          r"stop token among their labels \(all (\d+) that fit", text)
        assert found, variant
        examples, one_bos, with_stop, fitting = map(int, found.groups())
        assert examples == one_bos and fitting <= with_stop <= examples and 0 < fitting < examples
        assert "FutureWarning" not in text and "tie_word_embeddings" not in text


@pytest.mark.parametrize("variant", VARIANTS)
def test_run_leaves_adapter_merged_model_generations_and_plots(runs, variant):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = runs[1] / "instruction_tune" / variant
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    # The output layer trains in full; the Qwen2's is its input embeddings (tied), which PEFT
    # then trains as one module and keeps tied.
    tied = variant == "qwen2_5_0_5b_instruct"
    assert config["r"] == 8 and config["modules_to_save"] == (["model.embed_tokens"] if tied else ["lm_head"])
    assert config["ensure_weight_tying"] is tied
    assert (adapter / "adapter_model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(run_dir / "merged")
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert ("<|im_start|>" if tied else "[INST]") in tok.chat_template
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged", use_safetensors=True)
    assert merged.config.pad_token_id == tok.pad_token_id
    assert merged.config.tie_word_embeddings is tied
    if tied:
        assert merged.lm_head.weight is merged.model.embed_tokens.weight
    import pandas as pd

    generations = pd.read_csv(run_dir / "generations.csv")
    assert list(generations.columns) == ["prompt", "reference", "before", "before_tokens", "before_stopped",
                                         "after", "after_tokens", "after_stopped"]
    assert len(generations) == 3 and (generations[["before_tokens", "after_tokens"]] <= 48).all().all()
    for plot in ("loss_curves.png", "sequence_lengths.png"):
        assert (run_dir / plot).stat().st_size > 5000


def test_the_qwen_variant_runs_the_tiny_qwen2_and_its_record_names_it(runs):
    """The smoke counterpart of Qwen2.5-0.5B-Instruct is a Qwen2, not the tiny Llama."""
    rec = record.read_record(runs[1] / "instruction_tune" / "qwen2_5_0_5b_instruct")
    assert rec["model"] == ".cache/tiny-models/qwen2"
    config = json.loads((ROOT / rec["model"] / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert rec["config"]["chat_template"] == "" and rec["config"]["pad_token"] == ""


@pytest.mark.slow
def test_bad_row_stops_the_notebook_naming_the_row(cache, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = sample.text_rows(5) + [{"text": "What is 2 + 2? Four."}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    project = runner.select(runner.discover(ROOT, "smoke"), ["instruction_tune/llama2_7b"])[0]
    result = runner.run_project(project, "smoke", ROOT, tmp_path / "out", {"data_source": str(bad)})
    assert result.status == "failed"
    # One bad row in six is more than max_bad_row_share allows: named with its reason and row.
    assert "no [INST] ... [/INST] markers" in result.error and "data:5" in result.error
