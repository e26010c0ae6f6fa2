"""Several data sources in one training set, each row tagged with the source it came from.

With little labelled data the cheapest gain is often more data: other public sets of the same
task, usually in another schema (the detection competition's own file calls its label
`generated`, DAIGT v2 calls it `label`). Each extra source is a file path, or a mapping
`{path, text_column, label_column, name}` for a source whose columns are named differently.
Extra rows go into the *training* split only, so validation and test still measure the main
data set, and the `dataset` column says where each training row came from.

An extra source can hold the very essays the main data set holds out: the competition's
`train_essays.csv` comes from the same corpus as part of DAIGT v2. So every training row is
checked against the held-out splits (`remove_overlap`): a row whose normalised text
(`text_key`) is a validation or test essay is dropped, and, with a group column, so is a row of
a held-out group (a prompt the test must not have seen). For that an extra source names its own
group column and how its values map onto the main one's (`group_column`, `group_names`: the
competition's `prompt_id` 0 is DAIGT's `prompt_name` "Car-free cities"). The overlap table says
what was dropped, per source.
"""

from __future__ import annotations

from pathlib import Path

SOURCE_COLUMN = "dataset"
# What an extra_sources entry may say: its file, its column names, its name in the tables, and
# its group column with the mapping of its values onto the main data's group column.
ENTRY_KEYS = ("path", "text_column", "label_column", "name", "group_column", "group_names")


def _entry(entry, index: int, text_column: str, label_column: str) -> dict:
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or "path" not in entry:
        raise ValueError(f"extra_sources[{index}] must be a file path or a mapping with a 'path', got {entry!r}")
    unknown = set(entry) - set(ENTRY_KEYS)
    if unknown:
        raise ValueError(f"extra_sources[{index}]: unknown key(s) {sorted(unknown)}; "
                         f"expected {', '.join(ENTRY_KEYS)}")
    if "group_names" in entry and not isinstance(entry["group_names"], dict):
        raise ValueError(f"extra_sources[{index}].group_names must map the source's group values to the "
                         f"main data's (e.g. {{0: 'Car-free cities'}}), got {entry['group_names']!r}")
    if "group_names" in entry and "group_column" not in entry:
        raise ValueError(f"extra_sources[{index}] has group_names but no group_column naming the column "
                         "they map")
    return {"text_column": text_column, "label_column": label_column,
            "name": Path(entry["path"]).stem, **entry}


def load_source(entry, index: int, text_column: str, label_column: str, group_column: str = ""):
    """One extra source as a table of (text_column, labels, dataset), labels checked binary;
    with `group_column` (the main data's) and an entry that names its own group column, also
    that column, holding the entry's group values mapped through its `group_names`."""
    from datasets import Dataset

    from nbutils.data import binary_labels, load_table, require_columns

    entry = _entry(entry, index, text_column, label_column)
    param = f"extra_sources[{index}]"
    table = load_table(entry["path"], param=param)
    require_columns(table, **{f"{param}.text_column": entry["text_column"],
                              f"{param}.label_column": entry["label_column"]})
    labels = binary_labels(table[entry["label_column"]], entry["label_column"])
    texts = list(table[entry["text_column"]])
    keep = [i for i, text in enumerate(texts) if (text or "").strip()]
    columns = {text_column: [texts[i] for i in keep], "labels": [int(labels[i]) for i in keep],
               SOURCE_COLUMN: [entry["name"]] * len(keep)}
    if group_column and entry.get("group_column"):
        require_columns(table, **{f"{param}.group_column": entry["group_column"]})
        # Keys compared as text: YAML reads `0:` as a number, a JSON round trip makes it "0".
        names = {str(k): str(v) for k, v in entry.get("group_names", {}).items()}
        values = list(table[entry["group_column"]])
        columns[group_column] = [None if values[i] is None else names.get(str(values[i]), str(values[i]))
                                 for i in keep]
    return Dataset.from_dict(columns)


def append_sources(train, entries, text_column: str, label_column: str, primary_name: str,
                   group_column: str = ""):
    """`train` (tagged `primary_name`) followed by the rows of every extra source.

    Columns the extra sources lack (the main data's group columns, its row ids) are empty
    (None) for their rows; with `group_column`, a source that names its own group column fills
    it (see `load_source`).
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
        extra = load_source(entry, index, text_column, label_column, group_column)
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


# ----------------------------------------------------------------------------------------------
# Training rows that repeat held-out rows


def text_key(text) -> str:
    """A hash of an essay's normalised text: Unicode NFKC, case folded, runs of white space made
    one space. Copies that differ only in case, spacing or line ends get the same key."""
    import hashlib
    import unicodedata

    normal = " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())
    return hashlib.blake2b(normal.encode(), digest_size=16).hexdigest()


def remove_overlap(train, held_out: dict, text_column: str, group_column: str = "",
                   primary_name: str = "train"):
    """`train` without the rows that repeat a held-out split, and what was removed, per source.

    `held_out` maps a split name ("validation", "test", "out_of_domain", a fold's validation
    rows) to its table. A training row is removed when its `text_key` is that of a held-out
    row, or, with `group_column`, when its group is one of the held-out rows' groups (a row
    without a group cannot be checked: the table counts those as `no_group`). Rows are told
    apart by their `dataset` column (`primary_name` where there is none).

    Returns (kept rows, {source: {"rows", "same_text_as_<split>"..., "same_group_as_held_out",
    "no_group", "removed", "kept"}}); `overlap_table` shows the second.
    """
    import numpy as np

    keys = {name: {text_key(t) for t in rows[text_column]} for name, rows in held_out.items()}
    held_groups = set()
    if group_column:
        for rows in held_out.values():
            if group_column in rows.column_names:
                held_groups |= {str(g) for g in rows[group_column] if g is not None}
    own = [text_key(t) for t in train[text_column]]
    names = (list(train[SOURCE_COLUMN]) if SOURCE_COLUMN in train.column_names
             else [primary_name] * len(train))
    groups = (list(train[group_column]) if group_column and group_column in train.column_names
              else [None] * len(train))
    same_text = {name: np.array([k in held for k in own], dtype=bool) for name, held in keys.items()}
    same_group = np.array([g is not None and str(g) in held_groups for g in groups], dtype=bool)
    no_group = np.array([g is None for g in groups], dtype=bool) if group_column else np.zeros(len(train), bool)
    removed = same_group.copy()
    for flags in same_text.values():
        removed |= flags
    source = np.asarray(names, dtype=object)
    report = {}
    for name in dict.fromkeys(names):
        mine = source == name
        report[str(name)] = {"rows": int(mine.sum()),
                             **{f"same_text_as_{split}": int((flags & mine).sum())
                                for split, flags in same_text.items()},
                             "same_group_as_held_out": int((same_group & mine).sum()),
                             "no_group": int((no_group & mine).sum()),
                             "removed": int((removed & mine).sum()), "kept": int((~removed & mine).sum())}
    kept = train.select(np.flatnonzero(~removed)) if removed.any() else train
    return kept, report


def overlap_table(report: dict):
    """The `remove_overlap` report as a table: one row per source, plus the total."""
    import pandas as pd

    table = pd.DataFrame.from_dict(report, orient="index").rename_axis("training rows from")
    if len(table) > 1:
        table.loc["all"] = table.sum()
    return table
