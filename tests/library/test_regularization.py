"""Early stopping (with the Trainer settings it needs) and the dropout override."""

import pytest
import torch.nn as nn
from transformers import AutoConfig, DataCollatorWithPadding, EarlyStoppingCallback, Trainer

from tests import fixtures
from nbutils import metrics
from nbutils.regularization import dropout_overrides, early_stopping
from training_helpers import ALL_ARCHS, tiny_classifier, tokenized_essays, training_args

ES_ARGS = dict(eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
               metric_for_best_model="roc_auc", num_train_epochs=6, save_total_limit=1)


def compute_metrics(prediction):
    return metrics.binary_classification_metrics(
        prediction.label_ids, metrics.positive_probabilities(prediction.predictions))


def test_training_stops_after_patience_evaluations_without_progress(cache, tmp_path):
    data, tokenizer = tokenized_essays(cache, n=24)
    args = training_args(tmp_path, learning_rate=0.0, **ES_ARGS)  # rate 0: the metric never improves
    callbacks = early_stopping(2, args)
    assert [type(c) for c in callbacks] == [EarlyStoppingCallback]
    trainer = Trainer(model=tiny_classifier(cache, "bert"), args=args, train_dataset=data, eval_dataset=data,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
                      callbacks=callbacks)
    trainer.train()
    evaluations = [e for e in trainer.state.log_history if "eval_roc_auc" in e]
    assert len(evaluations) == 3  # the first sets the best, two more without progress stop it
    # A second training (the next trial of a search) starts with a fresh patience count.
    trainer.train()
    assert len([e for e in trainer.state.log_history if "eval_roc_auc" in e]) == 3


def test_no_patience_means_no_callback(tmp_path):
    assert early_stopping(0, training_args(tmp_path)) == []


def test_early_stopping_without_its_settings_is_an_error_naming_them(tmp_path):
    with pytest.raises(ValueError) as err:
        early_stopping(2, training_args(tmp_path))  # no evaluation, no metric, no best model
    message = str(err.value)
    assert message.startswith("early_stopping_patience=2 needs:")
    assert "eval_strategy is 'no'" in message and "metric_for_best_model is not set" in message
    assert "load_best_model_at_end is False" in message
    with pytest.raises(ValueError, match="early_stopping_patience must be a whole number >= 0"):
        early_stopping(-1, training_args(tmp_path))


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_dropout_override_reaches_every_dropout_module(cache, arch):
    from transformers import AutoModelForSequenceClassification

    path = fixtures.tiny_model_dir(cache, arch)
    overrides = dropout_overrides(AutoConfig.from_pretrained(path), 0.37)
    assert overrides and set(overrides.values()) == {0.37}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **overrides)
    for key in overrides:
        assert getattr(model.config, key) == 0.37
    modules = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert all(m.p == 0.37 for m in modules), {type(m).__name__: m.p for m in modules}
    if arch != "llama":  # Llama has attention dropout only (a float in its config, no module)
        assert modules


def test_bad_dropout_is_an_error(cache):
    config = AutoConfig.from_pretrained(fixtures.tiny_model_dir(cache, "bert"))
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\), got 1.5"):
        dropout_overrides(config, 1.5)
