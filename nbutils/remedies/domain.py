"""Domain mismatch: hold out every row whose column value is in a list, and test on them apart.

A random split scores the model on essays like the ones it trained on. The competition's hidden
test had other prompts and other generators: a model that only knows its training domain scores
far lower there. Holding out, say, a prompt or a generator (`holdout_column="prompt_name"`,
`holdout_values=[...]`) before splitting gives an out-of-domain test to report beside the
test split's score (which is itself on unseen prompts when the split is by prompt: the two then
differ in which prompts, not in whether they were seen).
"""

from __future__ import annotations

import numpy as np


def hold_out(dataset, column: str, values):
    """(rows to split as usual, held-out rows): rows whose `column` value is in `values`.

    Values compare as text, so `[false]` in YAML matches a boolean column and `["3"]` a
    number column.
    """
    from nbutils.data import require_columns

    require_columns(dataset, holdout_column=column)
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"holdout_values must name at least one value of column {column!r}, got {values!r}")
    present = [str(v) for v in dataset[column]]
    wanted = {str(v) for v in values}
    missing = sorted(wanted - set(present))
    if missing:
        shown = ", ".join(sorted(set(present))[:20])
        raise ValueError(f"holdout_values: {missing} do not occur in column {column!r}; values present: {shown}")
    held = np.asarray([v in wanted for v in present])
    if held.all():
        raise ValueError(f"holdout_values cover every row of column {column!r}: nothing would be left to train on")
    return dataset.select(np.flatnonzero(~held)), dataset.select(np.flatnonzero(held))
