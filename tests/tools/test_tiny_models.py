"""Tiny offline models: real architectures at toy size, loadable through the Auto classes."""

import hashlib

import pytest
import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                          AutoTokenizer)

from tests import fixtures
from tests.fixtures import samples, tiny_models

AUTO_CLASS = {"t5": AutoModelForSeq2SeqLM, "llama": AutoModelForCausalLM, "qwen2": AutoModelForCausalLM}
SENTENCE = "Furthermore, texting while driving causes many crashes."


@pytest.mark.parametrize("arch", tiny_models.ARCHITECTURES)
def test_tiny_model_loads_through_auto_classes(cache, arch):
    path = fixtures.tiny_model_dir(cache, arch)
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin")), "weights must be safetensors only"
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == arch
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or config.d_model
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None) or config.num_layers
    assert (hidden, layers) == (32, 2)

    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(SENTENCE)["input_ids"]
    assert tokenizer.unk_token_id not in ids, "the sample vocabulary should cover sample text"
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    expected = SENTENCE.lower() if arch in ("bert", "distilbert") else SENTENCE
    assert decoded.replace(" ,", ",").replace(" .", ".") == expected

    model = AUTO_CLASS.get(arch, AutoModelForMaskedLM).from_pretrained(path)
    batch = tokenizer([SENTENCE], return_tensors="pt")
    if arch == "t5":
        out = model(**batch, labels=batch["input_ids"])
    else:
        out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "deberta-v2"])
def test_encoders_load_as_two_class_classifiers(cache, arch):
    model = AutoModelForSequenceClassification.from_pretrained(
        fixtures.tiny_model_dir(cache, arch), num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, arch))
    logits = model(**tokenizer([SENTENCE, "so yeah."], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 2)


def test_tiny_models_are_deterministic(cache, tmp_path):
    """Building again with the same seed gives byte-identical weights and tokenizers."""
    texts = samples.corpus(fixtures.SEED)
    for arch in tiny_models.ARCHITECTURES:
        fresh = tiny_models.build_tiny_model(arch, tmp_path / arch, texts, seed=fixtures.SEED)
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            cached = fixtures.tiny_model_dir(cache, arch) / name
            assert hashlib.sha256((fresh / name).read_bytes()).digest() == \
                hashlib.sha256(cached.read_bytes()).digest(), f"{arch}/{name} differs"


def test_llama_tokenizer_behaves_like_llama2(cache):
    """BOS added, EOS not, no pad token: the SFT notebook must handle these as with the real one."""
    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "llama"))
    ids = tok("hello there")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    assert tok.pad_token is None


def test_qwen2_is_built_like_qwen2_5_instruct(cache):
    """What the smoke Qwen variant must exercise: tied embeddings, bias on the attention's
    query/key/value (not its output), grouped-query attention, no BOS, an end-of-turn EOS with a
    pad token of its own, and a ChatML chat template that the notebook keeps."""
    from nbutils.tasks.instruction_tuning import instructions

    path = fixtures.tiny_model_dir(cache, "qwen2")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    attention = model.model.layers[0].self_attn
    assert all(getattr(attention, p).bias is not None for p in ("q_proj", "k_proj", "v_proj"))
    assert attention.o_proj.bias is None
    assert model.config.num_key_value_heads < model.config.num_attention_heads

    tok = AutoTokenizer.from_pretrained(path)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
    assert sorted(model.generation_config.eos_token_id) == sorted([tok.eos_token_id, tok.pad_token_id])
    assert instructions.set_chat_template(tok, "") == "the tokenizer's own"  # the smoke variant's path
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tok.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n")
    prompt = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, chat[0]],
                                     tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    tokens = tok.convert_ids_to_tokens(prompt)
    assert tokens[0] == "<|im_start|>" and tokens.count("<|im_end|>") == 2  # one token each, no BOS


def test_t5_tokenizer_cannot_encode_braces_like_the_real_t5(cache):
    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "t5"))
    for char in "{}<":
        assert tok.unk_token_id in tok(f"df[{char}]")["input_ids"]


def test_unknown_architecture_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 'gpt9'.*bert"):
        tiny_models.build_tiny_model("gpt9", tmp_path, ["text"])
