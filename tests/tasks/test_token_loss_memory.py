"""The held-out loss of the instruction-tuning notebook holds at most a bounded slice of logits.

Peak memory is measured with a `TorchDispatchMode` that sees every tensor an operator
allocates inside the call and when it is freed (weak references), so it counts exactly the
tensors the loss makes (the model's weights exist before and are not counted).
"""

import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nbutils.tasks.instruction_tuning import causal_lm

VOCAB = 32_000  # a real vocabulary's size on a tiny model: the logits dominate memory
BATCH, LENGTH, PROMPT = 4, 160, 40
CHUNK = 64


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage allocated by operators while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.storages = 0, 0, {}

    def _free(self, key):
        entry = self.storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.storages:
                    self.storages[key] = [storage.nbytes(), 0]
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                self.storages[key][1] += 1
                weakref.finalize(t, self._free, key)
        return out


@pytest.fixture(scope="module")
def model_and_rows():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    rows = []
    for i in range(BATCH):
        n = LENGTH - 7 * i  # unequal lengths: padding must not count
        ids = torch.randint(1, VOCAB, (n,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * PROMPT + ids[PROMPT:]})
    return model, rows


def reference_loss(model, rows):
    """Today's computation: every example's full logits, mean over its label tokens."""
    total = count = 0
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(row["labels"][1:])
            total += F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count, count


def peak_of(function):
    with PeakTensorMemory() as meter:
        result = function()
    return result, meter.peak


def test_chunked_loss_is_the_exact_loss_with_bounded_memory(model_and_rows):
    model, rows = model_and_rows
    expected, count = reference_loss(model, rows)
    bound = 3 * CHUNK * VOCAB * 4  # a chunk's fp32 logits, their log-softmax, and slack
    chunked, peak = peak_of(lambda: causal_lm.token_loss(model, rows, 0, batch_size=BATCH,
                                                         chunk_tokens=CHUNK))
    whole, whole_peak = peak_of(lambda: causal_lm.token_loss(model, rows, 0, batch_size=BATCH,
                                                             chunk_tokens=0))
    full_logits = BATCH * LENGTH * VOCAB * 4
    assert chunked["tokens"] == whole["tokens"] == count
    assert chunked["loss"] == pytest.approx(expected, rel=1e-5)
    assert whole["loss"] == pytest.approx(expected, rel=1e-5)
    assert chunked["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert peak <= bound, f"peak {peak / 2**20:.1f} MiB over the bound {bound / 2**20:.1f} MiB"
    assert peak < full_logits / 4, "well below one copy of the batch's full logits"
    assert whole_peak > bound, "without chunking the same batch exceeds the bound"


def test_chunk_size_must_not_be_negative(model_and_rows):
    model, rows = model_and_rows
    with pytest.raises(ValueError, match="chunk_tokens"):
        causal_lm.token_loss(model, rows, 0, chunk_tokens=-1)
