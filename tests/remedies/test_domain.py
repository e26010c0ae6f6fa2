"""Domain mismatch (a split held out by a column) and per-group metrics."""

import json

import numpy as np
import pytest
from datasets import Dataset

from nbutils.remedies import domain
from nbutils.remedies.group_metrics import metrics_by_group

TABLE = Dataset.from_dict({"text": list("abcdefgh"), "prompt": ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4"],
                           "seven": [True] * 6 + [False] * 2})


def test_hold_out_by_column_values():
    rest, held = domain.hold_out(TABLE, "prompt", ["p2", "p4"])
    assert list(held["text"]) == ["c", "d", "g", "h"] and list(rest["text"]) == ["a", "b", "e", "f"]
    _, held = domain.hold_out(TABLE, "seven", [False])  # a YAML false matches a boolean column
    assert list(held["text"]) == ["g", "h"]


@pytest.mark.parametrize("column, values, error, message", [
    ("prompt_nam", ["p1"], KeyError, "holdout_column='prompt_nam' is not a column of the data; columns present: text, prompt, seven"),
    ("prompt", ["p9"], ValueError, r"holdout_values: \['p9'\] do not occur in column 'prompt'; values present: p1, p2, p3, p4"),
    ("prompt", [], ValueError, "holdout_values must name at least one value"),
    ("prompt", ["p1", "p2", "p3", "p4"], ValueError, "cover every row"),
])
def test_bad_holdout_is_an_error_naming_the_column(column, values, error, message):
    with pytest.raises(error, match=message):
        domain.hold_out(TABLE, column, values)


def test_metrics_by_group_expose_a_group_the_model_fails_on():
    labels = np.array([0, 1, 0, 1, 0, 1, 1, 1])
    probs = np.array([0.1, 0.9, 0.2, 0.8, 0.9, 0.1, 0.7, 0.2])  # right on p1, p2; wrong on p3
    groups = ["p1", "p1", "p2", "p2", "p3", "p3", "gen", "gen"]
    table = metrics_by_group(labels, probs, groups)
    assert list(table) == ["gen", "p1", "p2", "p3"]
    assert table["p1"]["accuracy"] == 1.0 and table["p1"]["roc_auc"] == 1.0
    assert table["p3"]["accuracy"] == 0.0 and table["p3"]["roc_auc"] == 0.0
    # One class only: the accuracy is the share caught; AUC and precision are undefined (None).
    assert table["gen"] == {"rows": 2, "generated": 2, "accuracy": 0.5, "precision": None,
                            "recall": None, "f1": None, "roc_auc": None}
    json.loads(json.dumps(table, allow_nan=False))  # valid JSON for the run record


def test_metrics_by_group_checks_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        metrics_by_group([0, 1], [0.2, 0.8], ["a"])
