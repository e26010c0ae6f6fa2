"""Loading and checking tabular text data: a hub id, a local file, or a Kaggle input path.

The same call reads the smoke profile's sample file and the real data, and the checks here
turn a user's mistake (a wrong path, a misspelt column, a label column that is not binary) into
an early error that names the parameter and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# File suffix -> the `datasets` builder that reads it.
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def is_file_source(source: str) -> bool:
    """A data file path (local or /kaggle/input/...), as opposed to a hub data set id."""
    return Path(source).suffix.lower() in FILE_BUILDERS or source.startswith(("/", "./", "../", "~"))


def load_table(source: str, split: str = "train", param: str = "data_source"):
    """Load one split of a data set as a `datasets.Dataset`.

    `source` is a .csv/.tsv/.json/.jsonl/.parquet file (local or a Kaggle input path) or a hub
    data set id (`split` picks its split; offline this needs the hub cache).
    """
    from datasets import load_dataset

    if not isinstance(source, str) or not source:
        raise ValueError(f"{param} must be a file path or a hub data set id, got {source!r}")
    if not is_file_source(source):
        return load_dataset(source, split=split)
    path = Path(source).expanduser()
    if path.suffix.lower() not in FILE_BUILDERS:
        raise ValueError(f"{param}={source!r}: unsupported file type {path.suffix!r}; "
                         f"expected one of {', '.join(sorted(FILE_BUILDERS))}")
    if not path.is_file():
        raise FileNotFoundError(f"{param}: data file not found: {path.resolve()}")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    return load_dataset(FILE_BUILDERS[path.suffix.lower()], data_files=str(path), split="train", **kwargs)


def fingerprint(source: str, dataset=None) -> str:
    """What identifies the data a run read: the SHA-256 of a file's bytes; for a folder (as
    `load_splits` reads it), the SHA-256 over the name and bytes of each split file in it; or,
    for a hub data set, the SHA-256 of its rows (`rows_digest`; of a `DatasetDict`, over the name
    and rows of each split). The same data gives the same fingerprint on every machine."""
    import hashlib

    folder = Path(source).expanduser()
    if folder.is_dir():
        digest = hashlib.sha256()
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in FILE_BUILDERS and _split_of(file.stem):
                digest.update(f"{file.name}\n{fingerprint(str(file))}\n".encode())
        return f"sha256:{digest.hexdigest()}"
    if is_file_source(source):
        digest = hashlib.sha256()
        with open(Path(source).expanduser(), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return f"sha256:{digest.hexdigest()}"
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):  # every split
        digest = hashlib.sha256()
        for name, split in dataset.items():
            digest.update(f"{name}\n{rows_digest(split)}\n".encode())
        return f"sha256:{digest.hexdigest()}"
    return f"sha256:{rows_digest(dataset)}"


def rows_digest(dataset, batch_rows: int = 10_000) -> str:
    """SHA-256 (hex) of a `datasets.Dataset`'s features and rows, in its order, as JSON: the same
    rows give the same digest whichever files or memory they were read from. (Arrow's own
    serialization is no such digest: the same table read from a file and built in memory
    came out as different bytes.)"""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(dataset.features.to_dict(), sort_keys=True).encode())
    for rows in dataset.with_format("arrow").iter(batch_size=batch_rows):
        # Stored values as they are (an image's bytes, not a decoded picture); bytes and the
        # like by their repr.
        digest.update(json.dumps(rows.to_pylist(), sort_keys=True, default=repr).encode())
    return digest.hexdigest()


SPLIT_NAMES = ("train", "validation", "test")
# File-name endings and hub split names that mean each split (samsum-validation.csv, dev.jsonl...).
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"),
                  "test": ("test",)}


def _split_of(stem: str) -> str | None:
    stem = stem.lower()
    for split, aliases in _SPLIT_ALIASES.items():
        if any(stem == a or stem.endswith(("-" + a, "_" + a, "." + a)) for a in aliases):
            return split
    return None


def load_splits(source: str, param: str = "data_source", val_size: float = 0.1,
                test_size: float = 0.1, seed: int = 0):
    """Train, validation and test splits as a `DatasetDict`, from
    - a hub data set id with those splits (`knkarthick/samsum`),
    - a folder with one file per split, named by the split (`train.jsonl`, `samsum-validation.csv`,
      `dev.parquet`; the layout of most Kaggle copies), or
    - a single file.
    A missing validation or test split is carved out of train at random (`val_size`, `test_size`
    are fractions of all rows), so a given split of the source is never mixed into training.
    """
    from datasets import DatasetDict, load_dataset

    if not isinstance(source, str) or not source:
        raise ValueError(f"{param} must be a folder, a file path or a hub data set id, got {source!r}")
    path = Path(source).expanduser()
    if path.is_dir():
        found: dict[str, list[Path]] = {}
        for file in sorted(path.iterdir()):
            if file.suffix.lower() in FILE_BUILDERS and _split_of(file.stem):
                found.setdefault(_split_of(file.stem), []).append(file)
        doubled = {split: [f.name for f in files] for split, files in found.items() if len(files) > 1}
        if doubled:
            raise ValueError(f"{param}={source!r}: more than one file for a split: {doubled}")
        if "train" not in found:
            present = ", ".join(sorted(f.name for f in path.iterdir())) or "nothing"
            raise FileNotFoundError(f"{param}={source!r}: no training file in the folder (expected a "
                                    f"csv/jsonl/json/parquet file named like train.jsonl); found: {present}")
        loaded = {split: load_table(str(files[0]), param=param) for split, files in found.items()}
    elif is_file_source(source):
        loaded = {"train": load_table(source, param=param)}
    else:
        hub = load_dataset(source)
        loaded = {}
        for name in hub:
            split = _split_of(name)
            if split and split not in loaded:
                loaded[split] = hub[name]
        if "train" not in loaded:
            raise ValueError(f"{param}={source!r} has no train split; its splits: {', '.join(hub)}")
    for name, size in (("val_size", val_size), ("test_size", test_size)):
        missing = "validation" if name == "val_size" else "test"
        if missing not in loaded and not 0 < size < 1:
            raise ValueError(f"{param}={source!r} has no {missing} split, so {name} must be a "
                             f"fraction between 0 and 1 to carve one out of train; got {size!r}")
    total = len(loaded["train"])
    for split, size, salt in (("test", test_size, 0), ("validation", val_size, 1)):
        if split not in loaded:
            parts = loaded["train"].train_test_split(test_size=size * total / len(loaded["train"]),
                                                     seed=seed + salt)
            loaded["train"], loaded[split] = parts["train"], parts["test"]
    return DatasetDict({split: loaded[split] for split in SPLIT_NAMES})


def require_columns(dataset, **columns: str) -> None:
    """Check that each named column exists: `require_columns(ds, text_column="text")`."""
    present = list(dataset.column_names)
    for param, column in columns.items():
        if column not in present:
            raise KeyError(f"{param}={column!r} is not a column of the data; "
                           f"columns present: {', '.join(present)}")


def check_template(template: str, fields, param: str = "template") -> str:
    """A prompt template for `str.format` must name each of `fields` exactly once and no other
    field: a missing field drops that input from every prompt, and an unknown one (or a lone
    "{" or "}") fails `str.format` mid-run. Returns the template."""
    import string

    wanted = list(fields)
    if not isinstance(template, str):
        raise ValueError(f"{param} must be a string template, got {template!r}")
    try:
        found = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:  # a lone "{" or "}"
        raise ValueError(f"{param}={template!r} is not a valid template ({err}); "
                         "write a literal brace as '{{' or '}}'") from err
    if sorted(found) != sorted(wanted):
        names = " and ".join("{" + f + "}" for f in wanted)
        each = "exactly once" if len(wanted) == 1 else "each exactly once,"
        raise ValueError(f"{param}={template!r} must contain {names} {each} and no other field; "
                         f"found {found or 'no field'}")
    return template


def binary_labels(values, column: str = "label") -> np.ndarray:
    """Return labels as int64 class indices 0/1, checking they are exactly two classes.

    Integer class indices (not one-hot floats) are what makes a classifier train with
    cross-entropy; one-hot float labels silently switch transformers to a multi-label sigmoid
    loss, the original DAIGT notebooks' bug.
    """
    array = np.asarray(list(values), dtype=object)
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in array):
        raise ValueError(f"label column {column!r} has missing values")
    classes = sorted(set(array.tolist()), key=str)
    if len(classes) != 2:
        shown = ", ".join(map(repr, classes[:10])) + (" ..." if len(classes) > 10 else "")
        raise ValueError(f"label column {column!r} must hold exactly two classes (0 = human, "
                         f"1 = generated); found {len(classes)}: {shown}")
    if not set(classes) <= {0, 1}:  # 0/1, 0.0/1.0 and False/True all compare equal to 0/1
        raise ValueError(f"label column {column!r} must hold 0/1 (or False/True); found {classes!r}")
    return array.astype(np.int64)


# With a group column, each of train, validation and test holds at least this many groups:
# a split of one group measures one prompt (its score cannot tell the model from that prompt's
# difficulty), and a threshold chosen on one prompt's essays transfers badly. Data with few
# groups (the smoke profile's 5 sample prompts) lowers it explicitly (`min_groups`).
MIN_GROUPS_PER_SPLIT = 2
# Above this many groups the subsets are not all tried: random orders of the groups are, with
# every prefix of each (a prefix is a candidate subset).
_EXHAUSTIVE_GROUPS = 14
_RANDOM_ORDERS = 2000
# Split-seed repeats (the detection notebook's `split_seeds`) re-draw the groups: the closest
# subset is one fixed set of prompts whatever the seed, so a repeat draws at random among the
# subsets whose rows out of place are within this share of the split's target rows of the
# closest one's (a test share of 10% then takes whole prompts of roughly 5% to 15% of the rows).
REPEAT_SLACK = 0.5


def _group_subset_cost(rows, positives, target_rows: float, share: float):
    """Rows out of place for each candidate subset: how far its row count is from the target,
    plus how many positive rows it holds beyond (or short of) the overall class share of its
    rows. Whole groups rarely hit a target exactly; this picks the closest, then the most
    stratified among equally close ones (both terms count rows, so neither needs a weight)."""
    return np.abs(rows - target_rows) + np.abs(positives - share * rows)


def _choose_groups(candidates: np.ndarray, rows: np.ndarray, positives: np.ndarray,
                   target_rows: float, share: float, min_groups: int, leave: int, rng,
                   slack: float = 0.0) -> np.ndarray:
    """The subset of `candidates` (group indices) with the fewest rows out of place, of at least
    `min_groups` groups and leaving at least `leave` groups behind; exact ties go to `rng`. With
    `slack` > 0, `rng` draws among the subsets within `slack` x `target_rows` of the fewest."""
    from itertools import combinations

    n = len(candidates)
    sizes = np.arange(min_groups, n - leave + 1)
    if n <= _EXHAUSTIVE_GROUPS:
        subsets = [np.asarray(c) for k in sizes for c in combinations(candidates, int(k))]
        cost = _group_subset_cost(np.array([rows[s].sum() for s in subsets]),
                                  np.array([positives[s].sum() for s in subsets]), target_rows, share)
    else:  # every prefix of many random orders, costed from cumulative sums
        orders = np.array([rng.permutation(candidates) for _ in range(_RANDOM_ORDERS)])
        prefix_cost = _group_subset_cost(rows[orders].cumsum(axis=1)[:, sizes - 1],
                                         positives[orders].cumsum(axis=1)[:, sizes - 1], target_rows, share)
        subsets = [(o, int(k)) for o in range(len(orders)) for k in sizes]
        cost = prefix_cost.ravel()
        subsets = [orders[o, :k] for o, k in subsets]
    best = (np.flatnonzero(cost <= cost.min() + slack * target_rows) if slack > 0
            else np.flatnonzero(np.isclose(cost, cost.min())))
    return np.sort(subsets[int(rng.choice(best))])


def group_split_indices(labels, groups, val_size: float, test_size: float, seed: int,
                        min_groups: int = MIN_GROUPS_PER_SPLIT, group_column: str = "group_column",
                        slack: float = 0.0):
    """(train, validation, test) row indices with every group in one split.

    `val_size` and `test_size` are shares of the *rows*: each split gets the whole groups whose
    rows come closest to its share, stratified by label where the groups allow (see
    `_group_subset_cost`), with at least `min_groups` groups in each split. That closest subset
    hardly depends on `seed`; `slack` > 0 (e.g. `REPEAT_SLACK`, for split-seed repeats) lets the
    seed draw among the subsets nearly as close, so that other seeds put other groups in test.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    if not isinstance(min_groups, int) or isinstance(min_groups, bool) or min_groups < 1:
        raise ValueError(f"min_groups must be a whole number >= 1, got {min_groups!r}")
    if not slack >= 0:
        raise ValueError(f"slack must be >= 0, got {slack!r}")
    names, inverse = np.unique(groups.astype(str), return_inverse=True)
    if len(names) < 3 * min_groups:
        raise ValueError(f"{group_column} has {len(names)} groups; train, validation and test need at least "
                         f"{min_groups} each ({3 * min_groups} in all) to be disjoint by group. Use a column "
                         "with more groups, lower the minimum (min_groups), or split without a group column")
    rows = np.bincount(inverse, minlength=len(names))
    positives = np.bincount(inverse, weights=(labels == labels.max()).astype(float), minlength=len(names))
    share = positives.sum() / rows.sum()
    rng = np.random.default_rng(seed)
    everything = np.arange(len(names))
    test = _choose_groups(everything, rows, positives, test_size * len(labels), share, min_groups,
                          2 * min_groups, rng, slack)
    rest = np.setdiff1d(everything, test)
    val = _choose_groups(rest, rows, positives, val_size * len(labels), share, min_groups, min_groups, rng,
                         slack)
    train = np.setdiff1d(rest, val)
    return tuple(np.flatnonzero(np.isin(inverse, chosen)) for chosen in (train, val, test))


def check_fractions(**fractions) -> None:
    """Each named split size (`val_size=0.1`, ...) is a fraction strictly between 0 and 1."""
    for name, fraction in fractions.items():
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"{name} must be a fraction between 0 and 1, got {fraction!r}")


def split_train_val_test(dataset, label_column: str, val_size: float, test_size: float,
                         seed: int, group_column: str = "", min_groups: int = MIN_GROUPS_PER_SPLIT,
                         slack: float = 0.0):
    """Split one table into train/validation/test `DatasetDict`.

    `val_size` and `test_size` are shares of the rows. Without `group_column` the split is
    stratified by label, so each split keeps the class balance. With `group_column` (such as
    DAIGT's `prompt_name`) whole groups go to one split, so the test measures unseen prompts:
    the shares are then met as closely as whole groups allow, stratified where the groups allow,
    with at least `min_groups` groups per split (`group_split_indices`; `slack` lets the seed
    draw other groups, for split-seed repeats).
    """
    from datasets import DatasetDict
    from sklearn.model_selection import train_test_split

    check_fractions(val_size=val_size, test_size=test_size)
    if val_size + test_size >= 1:
        raise ValueError(f"val_size + test_size must be below 1, got {val_size + test_size}")
    index = np.arange(len(dataset))
    labels = np.asarray(list(dataset[label_column]))
    if group_column:
        require_columns(dataset, group_column=group_column)
        train, val, test = group_split_indices(labels, list(dataset[group_column]), val_size, test_size,
                                               seed, min_groups, f"group_column={group_column!r}", slack)
    else:
        rest, test = train_test_split(index, test_size=test_size, random_state=seed, stratify=labels)
        train, val = train_test_split(rest, test_size=val_size / (1 - test_size), random_state=seed + 1,
                                      stratify=labels[rest])
    return DatasetDict(train=dataset.select(np.sort(train)),
                       validation=dataset.select(np.sort(val)),
                       test=dataset.select(np.sort(test)))


# --- Labelled texts (the detection notebooks): known column aliases and the malformed-row rule

# Other names public AI-text data sets give the same columns: the competition's own
# train_essays.csv calls the label `generated` and the prompt an integer `prompt_id`.
COLUMN_ALIASES = {"label": ("generated",), "generated": ("label",),
                  "prompt_name": ("prompt_id",), "prompt_id": ("prompt_name",)}


def resolve_columns(dataset, **columns: str) -> tuple[dict[str, str], list[str]]:
    """Each named column, or its known other name when only that is present (with a message
    saying so); an unknown column stops as `require_columns` does. Returns (param -> column
    found, messages)."""
    present = list(dataset.column_names)
    found, messages = {}, []
    for param, column in columns.items():
        if column in present or not column:
            found[param] = column
            continue
        alias = next((a for a in COLUMN_ALIASES.get(column, ()) if a in present), None)
        if alias is None:
            require_columns(dataset, **{param: column})
        found[param] = alias
        messages.append(f"{param}={column!r} is not a column of the data; using {alias!r}, the name "
                        f"this data set gives it (set {param}={alias!r} to silence this)")
    return found, messages


def has_non_ascii_letters(text: str) -> bool:
    """Letters outside ASCII (é, ü, ß...): a hint of another language than English."""
    return any(ord(c) > 127 and c.isalpha() for c in text)


def clean_labelled_texts(table, text_column: str, label_column: str, ledger, split: str = "data"):
    """Apply the malformed-row rule (`nbutils.run.row_report`) to a table of labelled texts.

    Repaired: `\\r\\n` line ends in the text. Dropped: a missing or blank text, a missing label,
    an exact duplicate of an earlier text (a copy could land in both training and test). Noted
    and kept: text with letters outside ASCII (another language?). Returns the kept rows, with
    `row_id` (the row's position in the file, stable across runs for the ensemble notebook).
    """
    from nbutils.run.row_report import is_blank, normalise_line_ends

    ledger.add_read(split, len(table))
    texts, keep, seen = [], [], set()
    for i, (text, label) in enumerate(zip(table[text_column], table[label_column])):
        if is_blank(text):
            ledger.drop(split, i, f"empty or missing {text_column!r}")
            continue
        if label is None or (isinstance(label, float) and np.isnan(label)):
            ledger.drop(split, i, f"missing {label_column!r}")
            continue
        text, changed = normalise_line_ends(text)
        if text in seen:
            ledger.drop(split, i, f"duplicate {text_column!r} (an earlier row has the same text)")
            continue
        seen.add(text)
        if changed:
            ledger.repair(split, i, "\\r\\n line ends normalised to \\n")
        if has_non_ascii_letters(text):
            ledger.note(split, i, "non-ASCII letters (another language?), kept")
        texts.append(text)
        keep.append(i)
    kept = table.select(keep)
    return kept.remove_columns([text_column]).add_column(text_column, texts).add_column("row_id", keep)
