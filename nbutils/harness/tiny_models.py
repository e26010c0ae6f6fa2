"""Tiny random models with locally trained tokenizers, for offline smoke runs and tests.

Each model has a real architecture's shape at toy size (2 layers, hidden 32) and a tokenizer of
the architecture's own class (WordPiece for BERT, byte-level BPE for RoBERTa and Qwen2, Unigram
for DeBERTa-v2 and T5, byte-fallback BPE for Llama) trained on the project's sample text. They are
written with `save_pretrained` (safetensors) and loaded back through the very `Auto*` calls the
full profile uses on hub checkpoints, so the notebooks have no smoke-only code path.
Same seed, same files.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

ARCHITECTURES = ("bert", "distilbert", "roberta", "deberta-v2", "t5", "llama", "qwen2")

HIDDEN = 32
LAYERS = 2
HEADS = 2
FFN = 64
VOCAB = 1000
MAX_POSITIONS = 512

# Every printable ASCII character gets a token, as in the real vocabularies, so the smoke
# runs do not see [UNK] where the real checkpoint would not. T5 is the exception on purpose:
# its real sentencepiece vocabulary cannot encode these characters (pandas code needs them).
ASCII = [chr(c) for c in range(33, 127)]
T5_MISSING = ["{", "}", "<"]


def _train(model, trainer, texts: Iterable[str], normalizer=None, pre_tokenizer=None):
    from tokenizers import Tokenizer

    tok = Tokenizer(model)
    if normalizer is not None:
        tok.normalizer = normalizer
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(texts, trainer=trainer)
    return json.loads(tok.to_str())["model"]


def _word_counts(texts, pre_tokenizer, lowercase: bool = False) -> list[tuple[str, int]]:
    """Words of the corpus with counts, most frequent first, ties in alphabetical order."""
    counts: Counter = Counter()
    for text in texts:
        text = text.lower() if lowercase else text
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


# WordPiece and Unigram vocabularies are built directly from word counts rather than with the
# `tokenizers` trainers, whose tie-breaking follows Rust's randomly seeded hash maps and so
# changes from one process to the next. Whole words plus single characters (continuation
# pieces `##c` for WordPiece) keep every text encodable; BPE training is deterministic.

def _wordpiece_vocab(texts, lowercase: bool) -> dict[str, int]:
    from tokenizers import pre_tokenizers

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces += [c.lower() for c in ASCII if c.lower() not in pieces] if lowercase else ASCII
    pieces = list(dict.fromkeys(pieces))
    pieces += ["##" + c for c in pieces[5:]]
    words = _word_counts(texts, pre_tokenizers.BertPreTokenizer(), lowercase)
    pieces += [w for w, _ in words if w not in pieces][: VOCAB - len(pieces)]
    return {piece: i for i, piece in enumerate(pieces)}


def _unigram_vocab(texts, specials: list[str], alphabet=ASCII) -> list[tuple[str, float]]:
    """Unigram pieces scored by log frequency: whole words first, characters as the fallback."""
    from tokenizers import pre_tokenizers

    words = _word_counts(texts, pre_tokenizers.Metaspace())
    total = sum(count for _, count in words)
    chars = ["\u2581"] + [c for c in alphabet]
    vocab = [(piece, 0.0) for piece in specials]
    # Characters score below any word, so a known word is always one piece.
    vocab += [(c, math.log(1 / (10 * total))) for c in chars]
    budget = VOCAB - len(vocab)
    vocab += [(w, math.log(count / total)) for w, count in words if w not in chars][:budget]
    return vocab


def _bpe(texts, specials: list[str], byte_level: bool):
    from tokenizers import models, pre_tokenizers, trainers

    if byte_level:  # RoBERTa/GPT-2 style
        model = models.BPE()
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # Llama/sentencepiece style: metaspace words, unknown characters fall back to bytes
        model = models.BPE(byte_fallback=True, unk_token="<unk>")
        pre = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        specials = specials + [f"<0x{i:02X}>" for i in range(256)]
        alphabet = []
    trained = _train(model, trainers.BpeTrainer(vocab_size=VOCAB + (0 if byte_level else 256),
                                                special_tokens=specials, initial_alphabet=alphabet,
                                                show_progress=False),
                     texts, pre_tokenizer=pre)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return trained["vocab"], merges


def _build_bert(texts):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    tok = BertTokenizer(vocab=_wordpiece_vocab(texts, lowercase=True))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=FFN,
                     max_position_embeddings=MAX_POSITIONS, pad_token_id=tok.pad_token_id)
    return BertForMaskedLM(cfg), tok


def _build_distilbert(texts):
    from transformers import DistilBertConfig, DistilBertForMaskedLM, DistilBertTokenizer

    tok = DistilBertTokenizer(vocab=_wordpiece_vocab(texts, lowercase=True))
    cfg = DistilBertConfig(vocab_size=len(tok), dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                           hidden_dim=FFN, max_position_embeddings=MAX_POSITIONS,
                           pad_token_id=tok.pad_token_id)
    return DistilBertForMaskedLM(cfg), tok


def _build_roberta(texts):
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    vocab, merges = _bpe(texts, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], byte_level=True)
    tok = RobertaTokenizer(vocab=vocab, merges=merges)
    # RoBERTa offsets positions by pad_token_id + 1, so it needs max_length + 2 positions.
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=FFN,
                        max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    return RobertaForMaskedLM(cfg), tok


def _build_deberta_v2(texts):
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM, DebertaV2Tokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [UNK] at id 1, as in deberta-v3
    tok = DebertaV2Tokenizer(vocab=_unigram_vocab(texts, specials))
    # deberta-v3-base's attention layout (relative positions, no absolute position input).
    cfg = DebertaV2Config(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, intermediate_size=FFN,
                          max_position_embeddings=MAX_POSITIONS, relative_attention=True,
                          position_buckets=64, norm_rel_ebd="layer_norm",
                          pos_att_type=["p2c", "c2p"], position_biased_input=False,
                          type_vocab_size=0, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    return DebertaV2ForMaskedLM(cfg), tok


def _build_t5(texts):
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    alphabet = [c for c in ASCII if c not in T5_MISSING]
    texts = [t.translate({ord(c): None for c in T5_MISSING}) for t in texts]
    tok = T5Tokenizer(vocab=_unigram_vocab(texts, ["<pad>", "</s>", "<unk>"], alphabet), extra_ids=0)
    # flan-t5's layout: gated-GELU feed-forward. Asking for untied embeddings turns off T5's
    # decoder-output scaling as in flan-t5, but transformers 5 ties T5's lm_head to the input
    # embeddings whatever the config says, so the tiny T5 is tied (flan-t5 checkpoints are not).
    cfg = T5Config(vocab_size=len(tok), d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN,
                   num_layers=LAYERS, num_decoder_layers=LAYERS, num_heads=HEADS,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    return T5ForConditionalGeneration(cfg), tok


def _build_llama(texts):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    vocab, merges = _bpe(texts, ["<unk>", "<s>", "</s>"], byte_level=False)
    # Like Llama-2's tokenizer: BOS added, no EOS added, and no pad token (notebooks must set one).
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=FFN,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg), tok


# Qwen2.5-Instruct's chat template (ChatML) without its tool-calling branches: a default system
# prompt where the conversation has none, every turn closed by <|im_end|> (the EOS) and a newline.
QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _build_qwen2(texts):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    vocab, merges = _bpe(texts, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], byte_level=True)
    # Like Qwen2.5-Instruct's: no BOS, EOS <|im_end|> (end of turn), its own pad token
    # <|endoftext|> (not EOS), and a chat template of its own.
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = QWEN2_CHAT_TEMPLATE
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    # Qwen2.5-0.5B's layout at toy size: grouped-query attention (fewer key/value heads), bias on
    # the query, key and value projections (Qwen2's attention always has it), output layer tied
    # to the input embeddings, rope theta 1e6.
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=FFN,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                      max_position_embeddings=2048, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                      bos_token_id=endoftext, eos_token_id=im_end)
    model = Qwen2ForCausalLM(cfg)
    # Generation stops at the end of a turn or of the text, as Qwen2.5-Instruct's config says.
    model.generation_config.eos_token_id = [im_end, endoftext]
    model.generation_config.pad_token_id = endoftext
    return model, tok


_BUILDERS: dict[str, Callable] = {
    "bert": _build_bert,
    "distilbert": _build_distilbert,
    "roberta": _build_roberta,
    "deberta-v2": _build_deberta_v2,
    "t5": _build_t5,
    "llama": _build_llama,
    "qwen2": _build_qwen2,
}


def build_tiny_model(arch: str, out_dir: str | Path, texts: list[str], seed: int = 0) -> Path:
    """Build one tiny model of `arch` and save it (weights as safetensors) to `out_dir`."""
    import torch

    if arch not in _BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    model, tokenizer = _BUILDERS[arch](texts)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)  # safetensors is the default format
    tokenizer.save_pretrained(out_dir)
    return out_dir
