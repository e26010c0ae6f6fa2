"""The forgetting measure: masked-LM loss on held-out general text through the backbone's own
pre-trained head, before and after fine-tuning; and the briefly pre-trained tiny BERT it needs."""

import hashlib
import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from tests import fixtures
from tests.fixtures import tiny_pretraining
from nbutils.tasks.strategies import forgetting
from nbutils import lora
from tests.fixtures.samples import detection, general_text


@pytest.fixture(scope="module")
def pretrained(cache):
    path = tiny_pretraining.model_dir(cache)
    return path, AutoTokenizer.from_pretrained(path), forgetting.load_masked_lm(str(path))


@pytest.fixture(scope="module")
def masked(pretrained):
    _, tokenizer, _ = pretrained
    return forgetting.mask_text(tokenizer, general_text.passages("heldout"), seed=42, copies=2)


def classifier(path, seed=0):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, use_safetensors=True)


# --- masking


def test_masking_is_deterministic_whatever_the_global_rng(pretrained):
    _, tokenizer, _ = pretrained
    texts = general_text.passages("heldout")
    torch.manual_seed(1)
    first = forgetting.mask_text(tokenizer, texts, seed=7)
    torch.manual_seed(2)
    torch.rand(100)  # training, evaluation, anything between "before" and "after" moves the global RNG
    second = forgetting.mask_text(tokenizer, texts, seed=7)
    other = forgetting.mask_text(tokenizer, texts, seed=8)
    assert first.input_ids == second.input_ids and first.labels == second.labels
    assert first.labels != other.labels


def test_masking_follows_berts_rule_and_never_masks_special_tokens(pretrained):
    _, tokenizer, _ = pretrained
    texts = general_text.passages("pretrain")
    originals = tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    m = forgetting.mask_text(tokenizer, texts, seed=0)
    specials = set(tokenizer.all_special_ids)
    masked_positions = replaced = 0
    for original, ids, labels in zip(originals, m.input_ids, m.labels):
        assert len(ids) == len(labels) == len(original)  # stored without padding
        for token, new, label in zip(original, ids, labels):
            if label == -100:
                assert new == token  # unmasked positions are untouched
            else:
                assert label == token and token not in specials
                masked_positions += 1
                replaced += new == tokenizer.mask_token_id
    share = masked_positions / sum(len(o) - 2 for o in originals)  # [CLS] and [SEP] never masked
    assert 0.13 < share < 0.17
    assert 0.75 < replaced / masked_positions < 0.85  # 80% become [MASK]
    assert m.masked_tokens == masked_positions


def test_copies_mask_every_text_again_at_other_positions(pretrained):
    _, tokenizer, _ = pretrained
    texts = general_text.passages("heldout")
    m = forgetting.mask_text(tokenizer, texts, seed=0, copies=3)
    n = len(texts)
    assert len(m.input_ids) == 3 * n
    assert m.labels[:n] != m.labels[n:2 * n]
    assert m.masked_tokens > 2.5 * forgetting.mask_text(tokenizer, texts, seed=0).masked_tokens


def test_a_tokenizer_without_a_mask_token_is_refused(cache):
    tokenizer = AutoTokenizer.from_pretrained(fixtures.tiny_model_dir(cache, "llama"))
    with pytest.raises(ValueError, match="no mask token.*encoder"):
        forgetting.mask_text(tokenizer, ["some text"])


# --- the loss and the transplant


def test_unchanged_weights_give_exactly_the_same_loss(pretrained, masked):
    """A classifier that was never trained, plain or wrapped in a fresh LoRA adapter (whose B
    matrices are zero), copied back into the masked LM: the very same loss, to the last bit."""
    path, _, mlm = pretrained
    before = forgetting.mlm_loss(mlm, masked)
    plain = forgetting.mlm_loss(forgetting.transplant_backbone(classifier(path), mlm), masked)
    adapter = lora.add_lora(classifier(path), lora.classification_lora_config(8, 16, 0.0, ["query", "value"]))
    with_lora = forgetting.mlm_loss(forgetting.transplant_backbone(adapter, mlm), masked)
    assert plain == before and with_lora == before
    assert forgetting.summarize(before, plain)["forgetting"] == 0.0


def test_the_loss_does_not_depend_on_the_batching(pretrained, masked):
    _, _, mlm = pretrained
    one, many = forgetting.mlm_loss(mlm, masked, batch_size=1), forgetting.mlm_loss(mlm, masked, batch_size=64)
    assert one["masked_tokens"] == many["masked_tokens"] == masked.masked_tokens
    assert one["loss"] == pytest.approx(many["loss"], abs=1e-5)
    assert one["accuracy"] == many["accuracy"]


def test_transplant_copies_the_fine_tuned_backbone_and_keeps_the_pretrained_head(pretrained, masked):
    path, _, mlm = pretrained
    head_before = {n: p.detach().clone() for n, p in mlm.named_parameters()}
    tuned = classifier(path)
    with torch.no_grad():  # stand-in for fine-tuning: move every backbone weight
        for p in tuned.bert.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    result = forgetting.transplant_backbone(tuned, mlm)
    for name, p in result.bert.named_parameters():
        assert torch.equal(p, tuned.bert.get_parameter(name)), name
    for name in ("cls.predictions.bias", "cls.predictions.transform.dense.weight",
                 "cls.predictions.transform.LayerNorm.weight"):
        assert torch.equal(result.get_parameter(name), head_before[name]), name
    # BERT's output matrix is tied to the word embeddings: it follows the fine-tuned ones.
    assert result.cls.predictions.decoder.weight.data_ptr() == result.bert.embeddings.word_embeddings.weight.data_ptr()
    for name, p in mlm.named_parameters():  # the masked LM itself is untouched
        assert torch.equal(p, head_before[name]), name
    assert forgetting.mlm_loss(result, masked)["loss"] > forgetting.mlm_loss(mlm, masked)["loss"]


def test_a_different_architecture_is_refused(pretrained, cache):
    _, _, mlm = pretrained
    other = AutoModelForSequenceClassification.from_pretrained(fixtures.tiny_model_dir(cache, "roberta"), num_labels=2)
    with pytest.raises(ValueError, match=r"\(roberta\) and the masked LM \(bert\)"):
        forgetting.transplant_backbone(other, mlm)


def test_a_checkpoint_without_its_masked_lm_head_is_refused(pretrained, tmp_path):
    """A classifier checkpoint has no MLM head: transformers would invent a random one."""
    path, tokenizer, _ = pretrained
    classifier(path).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no pre-trained masked-LM head.*cls.predictions"):
        forgetting.load_masked_lm(str(tmp_path))


def test_the_random_tiny_models_head_is_at_chance_and_the_pretrained_ones_is_not(cache, pretrained, masked):
    """Why the strategies study needs its own tiny backbone: the random tiny BERT does carry an MLM
    head (it was saved as BertForMaskedLM), but a random one, so its loss sits at ln(vocabulary)."""
    path, tokenizer, mlm = pretrained
    random_path = fixtures.tiny_model_dir(cache, "bert")
    random_mlm = forgetting.load_masked_lm(str(random_path))
    random_masked = forgetting.mask_text(AutoTokenizer.from_pretrained(random_path),
                                         general_text.passages("heldout"), seed=42)
    random_loss = forgetting.mlm_loss(random_mlm, random_masked)["loss"]
    assert random_loss == pytest.approx(forgetting.chance_loss(random_mlm.config.vocab_size), abs=0.2)
    assert not forgetting.head_is_informative(random_loss, random_mlm.config.vocab_size)
    loss = forgetting.mlm_loss(mlm, masked)["loss"]
    assert loss < 0.6 * forgetting.chance_loss(mlm.config.vocab_size)
    assert forgetting.head_is_informative(loss, mlm.config.vocab_size)


# --- general text


def test_general_text_loads_filters_and_names_a_missing_column(tmp_path):
    path = tmp_path / "general.jsonl"
    rows = [" = Heading of a section = ", "", "too short here", "one two three four five six seven",
            "eight nine ten eleven twelve thirteen fourteen fifteen"]
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    assert forgetting.load_general_text(str(path), min_words=5) == rows[3:]
    assert forgetting.load_general_text(str(path), min_words=5, max_passages=1) == rows[3:4]
    with pytest.raises(KeyError, match="general_text_column='body'"):
        forgetting.load_general_text(str(path), column="body")
    with pytest.raises(ValueError, match="no passage of at least 50 words"):
        forgetting.load_general_text(str(path), min_words=50)


def test_general_text_splits_are_disjoint_deterministic_and_not_essays():
    pretrain, heldout = general_text.passages("pretrain"), general_text.passages("heldout")
    assert not set(pretrain) & set(heldout)
    assert len(heldout) > 100 and len(pretrain) > 3 * len(heldout) - 10
    assert general_text.passages("heldout") == heldout
    essays = [row["text"] for row in detection.detection_rows()]
    assert forgetting.shared_passages(heldout, essays) == 0
    assert forgetting.shared_passages(heldout[:3], heldout[:2] + essays) == 2
    with pytest.raises(ValueError, match="unknown split 'test'"):
        general_text.passages("test")


# --- the briefly pre-trained tiny BERT


def test_pretrained_tiny_bert_loads_as_a_masked_lm_and_covers_its_texts(cache):
    path = tiny_pretraining.model_dir(cache)
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    model = AutoModelForMaskedLM.from_pretrained(path)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (32, 2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    for text in general_text.passages("heldout")[:20] + [row["text"] for row in detection.detection_rows()[:20]]:
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text


def test_pretrained_tiny_bert_is_deterministic(cache, tmp_path):
    """Pre-training again gives byte-identical weights and tokenizer (one CPU thread, fixed seed)."""
    fresh = tiny_pretraining.pretrain_tiny_bert(tmp_path / "bert", seed=fixtures.SEED)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        built = tiny_pretraining.model_dir(cache) / name
        digest = [hashlib.sha256(p.read_bytes()).digest() for p in (fresh / name, built)]
        assert digest[0] == digest[1], f"{name} differs"
