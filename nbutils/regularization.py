"""Regularization switches: early stopping with the Trainer settings it needs, and a dropout override.

Weight decay needs no helper: it is `TrainingArguments(weight_decay=...)`, applied by the Trainer
to every weight except biases and norms.
"""

from __future__ import annotations

from transformers import EarlyStoppingCallback


def early_stopping(patience: int, args, threshold: float = 0.0) -> list:
    """`[EarlyStoppingCallback]` for `Trainer(callbacks=...)`, or `[]` when `patience` is 0.

    Training stops after `patience` evaluations in a row without an improvement of
    `args.metric_for_best_model` by more than `threshold`, and the best checkpoint is loaded back.
    That needs evaluation during training, a metric and `load_best_model_at_end`; a missing one
    is an error here, not a silent no-op or an assertion deep in the Trainer.
    """
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
        raise ValueError(f"early_stopping_patience must be a whole number >= 0 (0: off), got {patience!r}")
    if patience == 0:
        return []
    problems = []
    if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
        problems.append("eval_strategy is 'no' (evaluate every 'epoch' or 'steps')")
    if not args.metric_for_best_model:
        problems.append("metric_for_best_model is not set")
    if not args.load_best_model_at_end:
        problems.append("load_best_model_at_end is False (the best checkpoint would be lost)")
    if problems:
        raise ValueError(f"early_stopping_patience={patience} needs: " + "; ".join(problems))
    # One callback serves every trial of a search: its count restarts with each training, whose
    # first evaluation has no best metric yet.
    return [EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)]


def dropout_overrides(config, probability: float) -> dict[str, float]:
    """`{config key: probability}` for every dropout probability in a model config.

    Pass the result to `from_pretrained(..., **overrides)`. The names differ per architecture
    (BERT: hidden_dropout_prob, attention_probs_dropout_prob, classifier_dropout; DistilBERT:
    dropout, attention_dropout, seq_classif_dropout; T5: dropout_rate; Llama: attention_dropout),
    so every numeric or unset config value whose key mentions dropout is set.
    """
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {probability!r}")
    keys = [key for key, value in config.to_dict().items()
            if "dropout" in key and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)))]
    if not keys:
        raise ValueError(f"dropout: the {type(config).__name__} has no dropout settings to override")
    return {key: float(probability) for key in keys}
