"""Class balancing: resampling the training split, and class-weighted cross-entropy."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers.modeling_outputs import SequenceClassifierOutput

from nbutils.remedies import balance

TABLE = Dataset.from_dict({"text": [f"essay {i}" for i in range(40)], "labels": [0] * 32 + [1] * 8})


def test_oversampling_repeats_the_minority_and_keeps_every_row():
    out = balance.resample(TABLE, "labels", "oversample", seed=0)
    assert balance.class_counts(out["labels"]) == {0: 32, 1: 32}
    assert set(out["text"]) == set(TABLE["text"])  # nothing dropped
    assert list(out["labels"]) != sorted(out["labels"]), "rows are shuffled, not grouped by class"


def test_undersampling_drops_majority_rows():
    out = balance.resample(TABLE, "labels", "undersample", seed=0)
    assert balance.class_counts(out["labels"]) == {0: 8, 1: 8}
    assert {t for t, y in zip(out["text"], out["labels"]) if y == 1} == set(TABLE["text"][32:])


def test_none_and_class_weights_leave_the_rows_alone():
    for method in ("none", "class_weights"):
        assert balance.resample(TABLE, "labels", method) is TABLE


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="balance must be one of none, oversample, undersample, class_weights"):
        balance.resample(TABLE, "labels", "smote")


def test_balanced_class_weights():
    weights = balance.class_weights(TABLE["labels"])
    assert weights == pytest.approx([40 / (2 * 32), 40 / (2 * 8)])
    # Each class then carries the same total weight.
    assert weights[0] * 32 == pytest.approx(weights[1] * 8)
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have no training rows"):
        balance.class_weights([0, 0, 0])


def test_weighted_loss_matches_torch_and_scales_for_gradient_accumulation():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    loss = balance.weighted_cross_entropy([0.75, 1.5])
    outputs = SequenceClassifierOutput(logits=logits)
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none") * torch.tensor([0.75, 1.5])[labels]
    assert loss(outputs, labels).item() == pytest.approx(per_row.mean().item())
    # Under gradient accumulation the Trainer passes the rows of the whole accumulated batch.
    assert loss(outputs, labels, num_items_in_batch=12).item() == pytest.approx(per_row.sum().item() / 12)
    # Equal weights give plain cross-entropy.
    plain = balance.weighted_cross_entropy(np.ones(2))(outputs, labels)
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
