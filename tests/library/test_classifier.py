"""Regression test for the original DAIGT bug: one-hot float labels trained three of the four
models with a multi-label sigmoid loss. The notebook's path (integer class indices, an explicit
single-label problem type) must give plain two-class cross-entropy."""

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nbutils import data
from tests import fixtures

TEXTS = ["Moreover, cities without cars have cleaner air.", "i think alot of stuff lol", "so yeah."]


def _model_and_batch(cache, **kwargs):
    path = fixtures.tiny_model_dir(cache, "bert")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **kwargs)
    batch = AutoTokenizer.from_pretrained(path)(TEXTS, padding=True, return_tensors="pt")
    return model, batch


def test_notebook_labels_train_with_two_class_cross_entropy(cache):
    model, batch = _model_and_batch(cache, problem_type="single_label_classification")
    labels = torch.from_numpy(data.binary_labels([1.0, 0.0, 0.0]))  # floats in the file
    assert labels.dtype == torch.int64
    out = model(**batch, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))


def test_one_hot_float_labels_would_silently_switch_to_sigmoid(cache):
    """The mechanism behind the bug, so the test above keeps meaning something."""
    model, batch = _model_and_batch(cache)
    one_hot = F.one_hot(torch.tensor([1, 0, 0]), 2).float()
    out = model(**batch, labels=one_hot)
    assert model.config.problem_type == "multi_label_classification"
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, one_hot))
