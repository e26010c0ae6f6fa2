"""The memory estimate printed before a model is loaded (issue 19): parameter counts from the
config alone on the meta device, and bytes per process for weights, gradients and AdamW state
under DDP and FSDP, checked against figures computed by hand for the tiny Llama; and its peak
(issue 28): the load-time peak, the CUDA context, activations and logits, checked by hand for
Llama-2-7B and 13B QLoRA in one and two processes."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from tests import fixtures
from nbutils import lora
from nbutils.parallel import memory

# The tiny Llama (.cache/tiny-models/llama): vocabulary 1256, hidden 32, MLP 64, 2 layers,
# 2 heads of 16, untied head. Per layer: q, k, v, o 4 x 32 x 32 = 4096; gate, up, down
# 3 x 32 x 64 = 6144; two RMSNorms 64 -> 10304. Embeddings 1256 x 32 = 40192, the final norm 32,
# the head 40192: 40192 + 2 x 10304 + 32 + 40192 = 101024.
P = 101_024
LINEAR_IN_LAYERS = 2 * (4096 + 6144)  # what bitsandbytes quantizes: 20480 (not the head)
LORA_QV_R8 = 2 * 2 * 8 * (32 + 32)  # q_proj and v_proj in 2 layers, r x (in + out) each: 2048

ARCHS = [("llama", "causal_lm", AutoModelForCausalLM, {}), ("t5", "seq2seq_lm", AutoModelForSeq2SeqLM, {}),
         *[(arch, "sequence_classification", AutoModelForSequenceClassification, {"num_labels": 2})
           for arch in ("bert", "distilbert", "roberta", "deberta-v2")]]


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, task, auto, options", ARCHS)
def test_the_meta_device_count_equals_the_real_models(cache, arch, task, auto, options):
    path = fixtures.tiny_model_dir(cache, arch)
    meta = memory.meta_model(str(path), task, **options)
    assert all(p.device.type == "meta" for p in meta.parameters())
    real = auto.from_pretrained(path, use_safetensors=True, **options)
    assert memory.parameter_layout(meta)["total"] == count(real)


def test_the_tiny_llama_counts_by_hand(cache):
    meta = memory.meta_model(str(fixtures.tiny_model_dir(cache, "llama")), "causal_lm")
    embeddings = 1256 * 32  # the largest parameter (and the head, of the same shape)
    assert memory.parameter_layout(meta) == {"total": P, "trainable": P, "quantized": 0, "lora": False,
                                             "largest": embeddings}
    config = lora.causal_lm_lora_config(8, 16, 0.1, ["q_proj", "v_proj"], [])
    layout = memory.parameter_layout(meta, config, quantize=True)
    assert layout == {"total": P + LORA_QV_R8, "trainable": LORA_QV_R8, "quantized": LINEAR_IN_LAYERS, "lora": True,
                      "largest": embeddings}


def test_lora_and_4bit_counts_match_peft_and_bitsandbytes_on_the_real_model(cache):
    from peft import get_peft_model

    path = fixtures.tiny_model_dir(cache, "llama")
    config = lora.causal_lm_lora_config(8, 16, 0.1, ["q_proj", "v_proj"], [])
    layout = memory.parameter_layout(memory.meta_model(str(path), "causal_lm"), config, quantize=True)
    quantized = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=lora.bnb_4bit_config("nf4", True, torch.float32), use_safetensors=True)
    import bitsandbytes as bnb

    assert layout["quantized"] == sum(m.in_features * m.out_features for m in quantized.modules()
                                      if isinstance(m, bnb.nn.Linear4bit))
    real = get_peft_model(AutoModelForCausalLM.from_pretrained(path, use_safetensors=True), config)
    assert (layout["trainable"], layout["total"]) == real.get_nb_trainable_parameters()


def test_only_the_config_is_read(cache, tmp_path):
    shutil.copy(fixtures.tiny_model_dir(cache, "llama") / "config.json", tmp_path / "config.json")
    result = memory.estimate_training_memory(str(tmp_path), "causal_lm")  # no weights in the folder
    assert result["parameters"]["total"] == P


FULL = {"total": P, "trainable": P, "quantized": 0, "lora": False}
QLORA = {"total": P + LORA_QV_R8, "trainable": LORA_QV_R8, "quantized": LINEAR_IN_LAYERS, "lora": True}


@pytest.mark.parametrize("layout, settings, weights, gradients, optimizer", [
    # Full fine-tuning in fp32, one process: 4 + 4 + 8 bytes per parameter.
    (FULL, dict(precision="fp32"), 4 * P, 4 * P, 8 * P),
    # bf16 mixed precision on fp32 weights under DDP, 2 processes: each holds all, plus a 16-bit
    # working copy of the weights (2 bytes) and DDP's gradient buckets (another 4).
    (FULL, dict(precision="bf16", processes=2), 6 * P, 8 * P, 8 * P),
    # The same under FSDP: each process holds half of the fp32 weights, gradients and moments.
    (FULL, dict(precision="bf16", distributed="fsdp", processes=2), 2 * P, 2 * P, 4 * P),
    # Weights loaded in bf16 and trained in bf16: 2 + 2 + 4 bytes (AdamW's moments in bf16 too).
    (FULL, dict(precision="bf16", weight_dtype="bf16"), 2 * P, 2 * P, 4 * P),
    # QLoRA in bf16, one process, plain NF4 (an fp32 scale per 64 weights: 0.5625 bytes each):
    # 80544 other frozen weights in bf16, the adapter in fp32 plus its bf16 working copy.
    (QLORA, dict(precision="bf16", weight_dtype="bf16", quantized_4bit=True, double_quant=False),
     (P - LINEAR_IN_LAYERS) * 2 + LINEAR_IN_LAYERS * 0.5625 + LORA_QV_R8 * (4 + 2),
     4 * LORA_QV_R8, 8 * LORA_QV_R8),
    # The same with double quantization, under FSDP over 2 processes: 0.5 + 1/64 + 4/16384 bytes
    # per 4-bit weight, everything halved, no working copy of the whole model.
    (QLORA, dict(precision="bf16", weight_dtype="bf16", quantized_4bit=True, distributed="fsdp", processes=2),
     ((P - LINEAR_IN_LAYERS) * 2 + LINEAR_IN_LAYERS * (0.5 + 1 / 64 + 4 / 16384) + LORA_QV_R8 * 4) / 2,
     4 * LORA_QV_R8 / 2, 8 * LORA_QV_R8 / 2),
])
def test_bytes_per_process_by_hand(layout, settings, weights, gradients, optimizer):
    result = memory.estimate(layout, **settings)["bytes_per_process"]
    assert result["weights"] == pytest.approx(weights, abs=1)
    assert result["gradients"] == pytest.approx(gradients, abs=1)
    assert result["optimizer"] == pytest.approx(optimizer, abs=1)
    assert result["total"] == pytest.approx(weights + gradients + optimizer, abs=1)


def test_fsdp_divides_what_ddp_holds_whole_by_the_processes():
    ddp = memory.estimate(FULL, distributed="ddp", processes=4)
    fsdp = memory.estimate(FULL, distributed="fsdp", processes=4)
    assert ddp["bytes_per_process"]["weights"] == 4 * fsdp["bytes_per_process"]["weights"]
    assert ddp["bytes_per_process"]["optimizer"] == 4 * fsdp["bytes_per_process"]["optimizer"]
    one = memory.estimate(FULL, distributed="ddp", processes=1)
    assert one["bytes_per_process"]["weights"] == ddp["bytes_per_process"]["weights"]


def test_the_estimate_reads_as_a_few_lines(cache):
    config = lora.causal_lm_lora_config(8, 16, 0.1, ["q_proj", "v_proj"], [])
    result = memory.estimate_training_memory(
        str(fixtures.tiny_model_dir(cache, "llama")), "causal_lm", precision="bf16", weight_dtype="bf16",
        lora_config=config, quantized_4bit=True, distributed="fsdp", processes=2, batch_size=4, seq_len=128)
    text = memory.describe(result)
    assert "FSDP over 2 processes: each holds 1/2" in text and "2,048 trainable in fp32" in text
    assert "weights in 4-bit" in text and "AdamW state" in text and "8 KiB" in text  # 8192 bytes
    assert "activations (rough)" in text and "batch 4 x 128 tokens" in text
    # Batch and length known: activations and logits counted, nothing left out.
    assert text.startswith("memory estimate before loading") and "left out" not in text
    assert not result["lower_bound"] and result["left_out"] == []
    unknown = memory.estimate_training_memory(str(fixtures.tiny_model_dir(cache, "llama")), "causal_lm")
    assert memory.describe(unknown).startswith("memory estimate (lower bound) before loading")
    assert unknown["left_out"] == ["activations", "logits"] and "left out: activations, logits" in memory.describe(unknown)


def test_bad_settings_are_named(monkeypatch):
    with pytest.raises(ValueError, match=r"distributed must be one of 'ddp', 'fsdp' \(.*\), got 'zero3'"):
        memory.estimate(FULL, distributed="zero3")
    with pytest.raises(ValueError, match="dtype must be one of fp32, bf16, fp16"):
        memory.estimate(FULL, precision="int8")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert memory.process_count(1) == 4 and memory.process_count(8) == 8
    assert memory.precision_of({"bf16": False, "fp16": True}) == "fp16"


def test_auto_weights_are_in_the_checkpoints_own_dtype(cache, tmp_path):
    import json

    config = json.loads((fixtures.tiny_model_dir(cache, "llama") / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    result = memory.estimate_training_memory(str(tmp_path), "causal_lm", precision="bf16")
    # Loaded in bf16 and fully fine-tuned, it trains in bf16: 2 + 2 + 4 bytes per parameter.
    assert result["weights_dtype"] == result["trainable_dtype"] == "bf16"
    assert result["bytes_per_process"]["total"] == 8 * P
    assert memory.estimate_training_memory(str(fixtures.tiny_model_dir(cache, "llama")),
                                           "causal_lm")["weights_dtype"] == "fp32"


def test_frozen_layers_do_not_count_as_trainable(cache):
    from nbutils import layers

    path = fixtures.tiny_model_dir(cache, "bert")
    result = memory.estimate_training_memory(str(path), "sequence_classification", num_labels=2,
                                             prepare=lambda m: layers.freeze_to(m, -1, 1))  # the head only
    real = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, use_safetensors=True)
    layers.freeze_to(real, -1, 1)
    trainable = sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert result["parameters"]["trainable"] == trainable < result["parameters"]["total"]
    assert result["bytes_per_process"]["optimizer"] == 8 * trainable


def test_the_estimate_shows_none_of_the_librarys_notes_on_the_model(cache):
    """Building on the meta device repeats the library's warnings about the model (PEFT's on
    tied layers, a deprecated property): they belong where the model is really loaded."""
    import warnings

    config = lora.seq2seq_lora_config(8, 16, 0.05, ["q", "k", "v", "o", "wi_0", "wi_1", "wo"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        memory.estimate_training_memory(str(fixtures.tiny_model_dir(cache, "t5")), "seq2seq_lm",
                                        lora_config=config)
    assert not [str(w.message) for w in caught]


# Llama-2-7B and 13B (NousResearch/Llama-2-{7,13}b-hf's config.json: vocabulary 32000, untied
# head, fp16 checkpoint), QLoRA r 64 on q_proj and v_proj, NF4 with double quantization, fp16
# compute, activation checkpointing, batch 4 x 1024 tokens. Every figure below by hand.
LLAMA2 = {"7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
          "13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40)}
NF4_DQ = 0.5 + 1 / 64 + 4 / (64 * 256)  # bytes per 4-bit weight: 0.515869...
GiB = 2 ** 30


def llama2(size):
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA2[size], num_key_value_heads=LLAMA2[size]["num_attention_heads"],
                       vocab_size=32000, max_position_embeddings=4096, dtype="float16")


def by_hand(size, processes):
    h, m, n = (LLAMA2[size][k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    heads = LLAMA2[size]["num_attention_heads"]
    quantized = n * (4 * h * h + 3 * h * m)  # q, k, v, o and gate, up, down in every layer
    plain = 2 * 32000 * h + (2 * n + 1) * h  # embeddings, head, RMSNorms: stay in fp16
    adapter = n * 2 * 64 * (h + h)  # r 64 on q_proj and v_proj, A and B
    shards = processes  # FSDP with 2 processes; 1: everything whole
    state = ((plain * 2 + quantized * NF4_DQ + adapter * 4) / shards
             + (adapter * 2 if processes == 1 else 0)  # the adapter's fp16 working copy (not under FSDP)
             + adapter * 4 / shards + adapter * 8 / shards)  # fp32 gradients, AdamW's two moments
    s, b = 1024, 4
    activations = n * 2 * s * b * h + s * b * h * (34 + 5 * heads * s / h)  # 16-bit, checkpointed
    logits = b * s * 32000 * 4 * 3  # three fp32 copies at the loss
    context = 512 * 2 ** 20
    load = plain * 2 + quantized * NF4_DQ + 32000 * h * 2 + context  # whole, in every process
    return {"quantized": quantized, "plain": plain, "adapter": adapter, "total": state,
            "activations": activations, "logits": logits, "training_peak": state + activations + logits + context,
            "load_peak": load}


@pytest.mark.parametrize("size", ["7B", "13B"])
@pytest.mark.parametrize("processes", [1, 2])
def test_the_peak_of_llama2_qlora_by_hand(size, processes):
    config = lora.causal_lm_lora_config(64, 16, 0.1, ["q_proj", "v_proj"], [])
    result = memory.estimate_training_memory(
        llama2(size), "causal_lm", precision="fp16", weight_dtype="fp16", lora_config=config,
        quantized_4bit=True, distributed="fsdp" if processes > 1 else "ddp", processes=processes,
        batch_size=4, seq_len=1024, checkpointing=True, cuda_context=True)
    hand = by_hand(size, processes)
    assert result["parameters"] == {"total": hand["quantized"] + hand["plain"] + hand["adapter"],
                                    "trainable": hand["adapter"], "quantized_4bit": hand["quantized"]}
    got = result["bytes_per_process"]
    for key in ("total", "activations", "logits", "training_peak", "load_peak"):
        assert got[key] == pytest.approx(hand[key], abs=2), key
    assert got["cuda_context"] == 512 * 2 ** 20
    assert got["peak"] == max(got["training_peak"], got["load_peak"])
    assert not result["lower_bound"]


def test_the_figures_the_issue_quotes():
    """Issue 28: 7B QLoRA's model state is 4.16 GiB; 13B's 7.6 GiB; 4 x 1024 tokens of a 32k
    vocabulary make 0.5 GB of fp32 logits per copy; under FSDP each process loads the whole 4-bit
    13B model, about 7 GiB, not the README's 3.5 GB per T4: the load, not training, is the peak."""
    config = lora.causal_lm_lora_config(64, 16, 0.1, ["q_proj", "v_proj"], [])
    seven = memory.estimate_training_memory(llama2("7B"), "causal_lm", precision="bf16", weight_dtype="bf16",
                                            lora_config=config, quantized_4bit=True, cuda_context=False)
    assert seven["bytes_per_process"]["total"] / GiB == pytest.approx(4.16, abs=0.005)
    thirteen = by_hand("13B", 1)
    assert thirteen["total"] / GiB == pytest.approx(7.59, abs=0.005)
    assert by_hand("7B", 1)["logits"] / 3 == 4 * 1024 * 32000 * 4 == pytest.approx(0.52e9, rel=0.01)
    fsdp = memory.estimate_training_memory(
        llama2("13B"), "causal_lm", precision="bf16", weight_dtype="bf16", lora_config=config, quantized_4bit=True,
        distributed="fsdp", processes=2, batch_size=1, seq_len=1024, checkpointing=True, cuda_context=True)
    got = fsdp["bytes_per_process"]
    whole_4bit = by_hand("13B", 2)["plain"] * 2 + by_hand("13B", 2)["quantized"] * NF4_DQ
    assert whole_4bit / GiB == pytest.approx(6.71, abs=0.01)
    assert got["load_peak"] > got["training_peak"] and fsdp["peak_at"] == "loading"
    assert got["total"] < whole_4bit / 2 + 0.4 * GiB  # training holds about half of it


def test_a_classifier_has_no_logit_term_and_a_seq2seq_models_logits_span_the_target(cache):
    bert = memory.estimate_training_memory(str(fixtures.tiny_model_dir(cache, "bert")), "sequence_classification",
                                           num_labels=2, batch_size=8, seq_len=64, cuda_context=False)
    assert bert["bytes_per_process"]["logits"] == 0 and bert["left_out"] == []
    t5 = str(fixtures.tiny_model_dir(cache, "t5"))
    without = memory.estimate_training_memory(t5, "seq2seq_lm", batch_size=8, seq_len=64, cuda_context=False)
    assert without["left_out"] == ["logits"] and without["lower_bound"]  # the target length is not known
    vocab = memory.load_config(t5).vocab_size
    with_target = memory.estimate_training_memory(t5, "seq2seq_lm", batch_size=8, seq_len=64, target_len=16,
                                                  cuda_context=False)
    assert with_target["bytes_per_process"]["logits"] == 8 * 16 * vocab * 4 * 3


def test_a_decoders_activations_run_at_the_target_length(cache):
    config = memory.load_config(str(fixtures.tiny_model_dir(cache, "t5")))
    h, a = config.hidden_size, config.num_attention_heads
    enc, dec = config.num_layers, config.num_decoder_layers
    b, s, t = 8, 64, 16
    full = enc * s * b * h * (34 + 5 * a * s / h) + dec * t * b * h * (34 + 5 * a * (t + s) / h)
    assert memory.activation_bytes(config, b, s, "bf16", target_len=t) == pytest.approx(full)
    kept = 2 * b * h * (enc * s + dec * t) + max(s * b * h * (34 + 5 * a * s / h), t * b * h * (34 + 5 * a * (t + s) / h))
    assert memory.activation_bytes(config, b, s, "fp32", checkpointing=True, target_len=t) == pytest.approx(2 * kept)
