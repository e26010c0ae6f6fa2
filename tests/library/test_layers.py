"""Layer groups and freezing on the tiny model of every architecture, plain and PEFT-wrapped.

Like LLaMA-Factory's freeze test, these assert `requires_grad` parameter by parameter."""

import pytest
import torch.nn as nn

from nbutils import layers
from nbutils.run import record
from training_helpers import ALL_ARCHS, tiny_classifier, tiny_native

# Blocks each tiny model has, bottom to top (T5: encoder, then decoder).
BLOCKS = {"bert": ["encoder.layer.0", "encoder.layer.1"],
          "roberta": ["encoder.layer.0", "encoder.layer.1"],
          "deberta-v2": ["encoder.layer.0", "encoder.layer.1"],
          "distilbert": ["transformer.layer.0", "transformer.layer.1"],
          "llama": ["layers.0", "layers.1"],
          "t5": ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]}


def models(cache):
    for arch in ALL_ARCHS:
        yield arch, "classifier", tiny_classifier(cache, arch)
        if arch in ("t5", "llama"):
            yield arch, "native", tiny_native(cache, arch)


def trainable_flags(groups):
    return [{p.requires_grad for _, p in g.parameters} for g in groups]


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_groups_are_embeddings_blocks_head_and_cover_every_parameter_once(cache, arch):
    for model in ([tiny_classifier(cache, arch)] + ([tiny_native(cache, arch)] if arch in ("t5", "llama") else [])):
        groups = layers.layer_groups(model)
        assert [g.name for g in groups] == ["embeddings", *BLOCKS[arch], "head"]
        seen = [id(p) for g in groups for _, p in g.parameters]
        assert len(seen) == len(set(seen)) == len(list(model.parameters()))
        for group in groups[1:-1]:  # a block group holds that block's weights (+ T5's encoder norm)
            assert all(f".{group.name}." in f".{name}" or "encoder.final_layer_norm" in name
                       for name, _ in group.parameters), group.name
        head = [name for name, _ in groups[-1].parameters]
        assert any(key in n for n in head for key in ("classifier", "score", "classification_head",
                                                      "lm_head", "final_layer_norm", "norm"))
        assert not any("embed" in n for n in head)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_freeze_freeze_to_and_unfreeze_set_requires_grad_per_group(cache, arch):
    model = tiny_classifier(cache, arch)
    n = len(BLOCKS[arch]) + 2
    groups = layers.freeze(model)
    assert trainable_flags(groups) == [{False}] * (n - 1) + [{True}]
    groups = layers.freeze_to(model, -2)
    assert trainable_flags(groups) == [{False}] * (n - 2) + [{True}] * 2
    groups = layers.freeze_to(model, 1)  # only the embeddings stay frozen
    assert trainable_flags(groups) == [{False}] + [{True}] * (n - 1)
    groups = layers.unfreeze(model)
    assert trainable_flags(groups) == [{True}] * n
    assert record.count_parameters(model)["trainable"] == record.count_parameters(model)["total"]


def test_blocks_per_group_merges_consecutive_blocks_within_a_stack(cache):
    t5 = tiny_native(cache, "t5")
    assert [g.name for g in layers.layer_groups(t5, 2)] == [
        "embeddings", "encoder.block.0-1", "decoder.block.0-1", "head"]
    # A group never straddles the encoder and the decoder, even when it could hold more blocks.
    assert [g.name for g in layers.layer_groups(t5, 3)] == [
        "embeddings", "encoder.block.0-1", "decoder.block.0-1", "head"]
    bert = tiny_classifier(cache, "bert")
    assert [g.name for g in layers.layer_groups(bert, 2)] == ["embeddings", "encoder.layer.0-1", "head"]
    assert layers.layer_groups(bert, 2)[1].numel() == sum(g.numel() for g in layers.layer_groups(bert)[1:3])


def test_t5_encoder_final_norm_goes_with_the_encoder_and_decoder_norm_with_the_head(cache):
    groups = {g.name: [n for n, _ in g.parameters] for g in layers.layer_groups(tiny_native(cache, "t5"))}
    assert "encoder.final_layer_norm.weight" in groups["encoder.block.1"]
    assert "decoder.final_layer_norm.weight" in groups["head"]
    # The tied output projection is the shared embedding: one weight, in the embeddings group.
    assert groups["embeddings"] == ["shared.weight"]


def test_trainable_summary_counts_per_group_and_in_total(cache):
    model = tiny_classifier(cache, "deberta-v2")
    layers.freeze_to(model, -2)
    table = layers.trainable_summary(model)
    assert list(table.index) == ["embeddings", "encoder.layer.0", "encoder.layer.1", "head", "all"]
    counts = record.count_parameters(model)
    assert table.loc["all", "trainable"] == counts["trainable"] and table.loc["all", "total"] == counts["total"]
    assert table.loc["embeddings", "trainable"] == 0 and table.loc["encoder.layer.0", "trainable"] == 0
    assert table.loc["encoder.layer.1", "trainable"] == table.loc["encoder.layer.1", "total"] > 0


@pytest.mark.parametrize("n", [4, 7, -5])
def test_freeze_to_beyond_the_number_of_groups_is_an_error_naming_the_groups(cache, n):
    model = tiny_classifier(cache, "bert")
    with pytest.raises(ValueError) as err:
        layers.freeze_to(model, n)
    message = str(err.value)
    assert f"freeze_to={n} is out of range" in message
    assert "4 layer groups (embeddings, encoder.layer.0, encoder.layer.1, head)" in message
    assert "use 0..3" in message and "-4..-1" in message


def test_bad_blocks_per_group_is_an_error(cache):
    with pytest.raises(ValueError, match="blocks_per_group must be a whole number >= 1, got 0"):
        layers.layer_groups(tiny_classifier(cache, "bert"), 0)


def test_unknown_architecture_is_an_error_naming_the_known_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(layers.LayoutError) as err:
        layers.freeze(model)
    message = str(err.value)
    assert "unknown architecture 'gpt2' (GPT2LMHeadModel)" in message
    assert "known: bert, roberta, distilbert, deberta-v2, t5, llama" in message


def test_known_architecture_with_an_unknown_layer_layout_is_an_error():
    class Config:
        model_type = "bert"

    class Custom(nn.Module):  # says it is BERT, but keeps its blocks elsewhere
        config = Config()

        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(layers.LayoutError, match="unknown layer layout for Custom .*ModuleList at encoder.layer"):
        layers.layer_groups(Custom())


def test_peft_model_freezing_touches_only_adapters(cache):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_classifier(cache, "bert"),
                           LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    before = record.count_parameters(model)["trainable"]
    groups = layers.layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", "encoder.layer.0", "encoder.layer.1", "head"]

    layers.freeze(model)
    trainable = [n for g in groups for n, p in g.parameters if p.requires_grad]
    assert trainable and all("classifier.modules_to_save.default" in n for n in trainable)
    layers.freeze_to(model, -2)
    trainable = {n for g in groups for n, p in g.parameters if p.requires_grad}
    assert any("encoder.layer.1." in n and "lora_" in n for n in trainable)
    assert not any("encoder.layer.0." in n for n in trainable)
    layers.unfreeze(model)
    # Back to exactly what PEFT trains: adapters and the saved head, never the base weights.
    assert record.count_parameters(model)["trainable"] == before
    for g in groups:
        for name, p in g.parameters:
            assert p.requires_grad == ("lora_" in name or "modules_to_save" in name), name


def test_peft_t5_groups_follow_the_wrapped_model(cache):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_native(cache, "t5"), LoraConfig(task_type="SEQ_2_SEQ_LM", r=4,
                                                                target_modules=["q", "v"]))
    groups = layers.freeze_to(model, -2)  # decoder block 1 and the head; the head has no adapter
    assert [g.name for g in groups] == ["embeddings", *BLOCKS["t5"], "head"]
    trainable = {n for g in groups for n, p in g.parameters if p.requires_grad}
    assert trainable and all(n.startswith("decoder.block.1.") and "lora_" in n for n in trainable)
