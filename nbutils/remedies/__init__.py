"""Remedies a notebook reaches for when the data or the model misbehaves.

`augment` (text augmentation), `balance` (class balance), `cv` (grouped cross-validation),
`domain` (domain shift checks), `search` (hyperparameter search), `sources` (extra training
sources, checked against the test rows), `group_metrics` (metrics per group). Each is optional:
a recipe turns it on with a parameter.
"""
