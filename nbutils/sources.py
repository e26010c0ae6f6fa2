"""Several data sources in one training set, each row tagged with the source it came from.

With little labelled data the cheapest gain is often more data: other public sets of the same
task, usually in another schema (the detection competition's own file calls its label
`generated`, DAIGT v2 calls it `label`). Each extra source is a file path, or a mapping
`{path, text_column, label_column, name}` for a source whose columns are named differently.
Extra rows go into the *training* split only, so validation and test still measure the main
data set, and the `dataset` column says where each training row came from.
"""

from __future__ import annotations

from pathlib import Path

SOURCE_COLUMN = "dataset"


def _entry(entry, index: int, text_column: str, label_column: str) -> dict:
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or "path" not in entry:
        raise ValueError(f"extra_sources[{index}] must be a file path or a mapping with a 'path', got {entry!r}")
    unknown = set(entry) - {"path", "text_column", "label_column", "name"}
    if unknown:
        raise ValueError(f"extra_sources[{index}]: unknown key(s) {sorted(unknown)}; "
                         "expected path, text_column, label_column, name")
    return {"text_column": text_column, "label_column": label_column,
            "name": Path(entry["path"]).stem, **entry}


def load_source(entry, index: int, text_column: str, label_column: str):
    """One extra source as a table of (text_column, labels, dataset), labels checked binary."""
    from datasets import Dataset

    from .data import binary_labels, load_table, require_columns

    entry = _entry(entry, index, text_column, label_column)
    param = f"extra_sources[{index}]"
    table = load_table(entry["path"], param=param)
    require_columns(table, **{f"{param}.text_column": entry["text_column"],
                              f"{param}.label_column": entry["label_column"]})
    labels = binary_labels(table[entry["label_column"]], entry["label_column"])
    texts = list(table[entry["text_column"]])
    keep = [i for i, text in enumerate(texts) if (text or "").strip()]
    return Dataset.from_dict({text_column: [texts[i] for i in keep],
                              "labels": [int(labels[i]) for i in keep],
                              SOURCE_COLUMN: [entry["name"]] * len(keep)})


def append_sources(train, entries, text_column: str, label_column: str, primary_name: str):
    """`train` (tagged `primary_name`) followed by the rows of every extra source.

    Columns the extra sources lack (the main data's group columns, its row ids) are empty
    (None) for their rows.
    """
    from datasets import concatenate_datasets

    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"extra_sources must be a list of files, got {entries!r}")
    if not entries:
        return train
    if SOURCE_COLUMN not in train.column_names:
        train = train.add_column(SOURCE_COLUMN, [primary_name] * len(train))
    parts = [train]
    for index, entry in enumerate(entries):
        extra = load_source(entry, index, text_column, label_column)
        for column in train.column_names:
            if column not in extra.column_names:
                extra = extra.add_column(column, [None] * len(extra))
        parts.append(extra.select_columns(train.column_names).cast(train.features))
    return concatenate_datasets(parts)


def source_counts(dataset) -> dict[str, dict[str, int]]:
    """{source: {"rows", "generated"}} for the run record."""
    import numpy as np

    sources = np.asarray(list(dataset[SOURCE_COLUMN]))
    labels = np.asarray(list(dataset["labels"]))
    return {str(s): {"rows": int((sources == s).sum()), "generated": int(labels[sources == s].sum())}
            for s in sorted(set(sources.tolist()))}
