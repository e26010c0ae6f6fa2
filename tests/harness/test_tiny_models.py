"""Tiny offline models: real architectures at toy size, loadable through the Auto classes."""

import hashlib

import pytest
import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                          AutoTokenizer)

from nbutils.harness import fixtures, samples, tiny_models

AUTO_CLASS = {"t5": AutoModelForSeq2SeqLM, "llama": AutoModelForCausalLM}
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


def test_t5_tokenizer_cannot_encode_braces_like_the_real_t5(cache):
    tok = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "t5"))
    for char in "{}<":
        assert tok.unk_token_id in tok(f"df[{char}]")["input_ids"]


def test_unknown_architecture_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 'gpt9'.*bert"):
        tiny_models.build_tiny_model("gpt9", tmp_path, ["text"])
