"""Data loading and the errors a user can cause: wrong path, column, labels, split sizes."""

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset

from nbutils import data


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "text": [f"essay number {i}" for i in range(200)],
        "generated": rng.integers(0, 2, 200),
        "prompt_name": [f"prompt {i % 8}" for i in range(200)],
    })


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_load_table_reads_local_files(tmp_path, frame, suffix):
    path = tmp_path / f"essays{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False),
     ".tsv": lambda: frame.to_csv(path, index=False, sep="\t"),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    table = data.load_table(str(path))
    assert len(table) == 200
    assert set(table.column_names) == {"text", "generated", "prompt_name"}


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "train.csv"
    with pytest.raises(FileNotFoundError, match=r"data_source: data file not found: .*nope/train\.csv"):
        data.load_table(str(missing))


def test_unsupported_file_type_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported file type '\.xlsx'"):
        data.load_table(str(tmp_path / "train.xlsx"))


def test_hub_ids_are_not_mistaken_for_files():
    assert data.is_file_source("/kaggle/input/daigt/train.csv")
    assert data.is_file_source("essays.jsonl")
    assert not data.is_file_source("knkarthick/samsum")


def test_missing_column_names_it_and_lists_the_columns(frame):
    table = Dataset.from_pandas(frame)
    with pytest.raises(KeyError, match=r"label_column='label' is not a column.*columns present: "
                                       r"text, generated, prompt_name"):
        data.require_columns(table, text_column="text", label_column="label")


@pytest.mark.parametrize("values", [[0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0], [False, True, True, False]])
def test_binary_labels_become_integer_class_indices(values):
    labels = data.binary_labels(values)
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("values, message", [
    ([0, 1, 2, 1], r"exactly two classes.*found 3: 0, 1, 2"),
    ([1, 1, 1], r"exactly two classes.*found 1"),
    (["human", "ai", "ai"], r"must hold 0/1"),
    ([0, None, 1], r"missing values"),
    ([0, float("nan"), 1], r"missing values"),
])
def test_non_binary_labels_are_rejected(values, message):
    with pytest.raises(ValueError, match=message):
        data.binary_labels(values, column="generated")


def test_split_is_disjoint_complete_and_stratified(frame):
    table = Dataset.from_pandas(frame).add_column("row_id", list(range(200)))
    splits = data.split_train_val_test(table, "generated", 0.1, 0.2, seed=0)
    ids = {name: set(split["row_id"]) for name, split in splits.items()}
    assert [len(ids[n]) for n in ("train", "validation", "test")] == [140, 20, 40]
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
    share = frame["generated"].mean()
    for split in splits.values():
        assert abs(np.mean(list(split["generated"])) - share) < 0.06


def test_split_is_reproducible(frame):
    table = Dataset.from_pandas(frame)
    a = data.split_train_val_test(table, "generated", 0.1, 0.1, seed=3)
    b = data.split_train_val_test(table, "generated", 0.1, 0.1, seed=3)
    assert list(a["test"]["text"]) == list(b["test"]["text"])


def test_group_split_keeps_each_group_in_one_split(frame):
    table = Dataset.from_pandas(frame)
    splits = data.split_train_val_test(table, "generated", 0.2, 0.25, seed=0, group_column="prompt_name")
    groups = {name: set(split["prompt_name"]) for name, split in splits.items()}
    assert all(groups.values())
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["validation"])
    assert not (groups["validation"] & groups["test"])


def test_split_errors_name_the_parameter(frame):
    table = Dataset.from_pandas(frame)
    with pytest.raises(ValueError, match="test_size must be a fraction"):
        data.split_train_val_test(table, "generated", 0.1, 1.5, seed=0)
    with pytest.raises(ValueError, match="val_size \\+ test_size must be below 1"):
        data.split_train_val_test(table, "generated", 0.5, 0.5, seed=0)
    with pytest.raises(KeyError, match="group_column='topic'"):
        data.split_train_val_test(table, "generated", 0.1, 0.1, seed=0, group_column="topic")


# --- group splits: shares of rows, stratified, a minimum of groups per split


def grouped_table(sizes, positive_share):
    """One row per essay: group g has sizes[g] rows, positive_share[g] of them labelled 1."""
    groups, labels = [], []
    for g, (n, share) in enumerate(zip(sizes, positive_share)):
        groups += [f"prompt {g}"] * n
        positives = round(n * share)
        labels += [1] * positives + [0] * (n - positives)
    return Dataset.from_dict({"prompt_name": groups, "labels": labels, "row_id": list(range(len(labels)))})


@pytest.mark.parametrize("seed", range(6))
def test_group_split_shares_are_shares_of_rows(seed):
    """Groups of very unequal size: 10% of 500 rows is 50, which whole groups can hit exactly
    (the 50-row group, or 40 + 10, ...). The share used to count groups: one group of ten drawn
    at random, up to 200 rows (40%) for a `test_size` of 0.1."""
    table = grouped_table([200, 100, 50, 50, 40, 30, 10, 10, 5, 5], [0.5] * 10)
    splits = data.split_train_val_test(table, "labels", 0.1, 0.1, seed, group_column="prompt_name")
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [400, 50, 50]
    groups = {s: set(splits[s]["prompt_name"]) for s in splits}
    assert all(len(g) >= data.MIN_GROUPS_PER_SPLIT for g in groups.values())
    assert not (groups["train"] & groups["test"]) and not (groups["validation"] & groups["test"])


@pytest.mark.parametrize("seed", range(6))
def test_group_split_is_stratified_where_the_groups_allow(seed):
    """Eight groups of 25 essays, four all generated and four all human: a quarter of the rows
    is any two groups, and only one generated + one human group keeps the class balance."""
    table = grouped_table([25] * 8, [1, 1, 1, 1, 0, 0, 0, 0])
    splits = data.split_train_val_test(table, "labels", 0.25, 0.25, seed, group_column="prompt_name")
    for name in ("validation", "test"):
        assert len(splits[name]) == 50 and np.mean(splits[name]["labels"]) == 0.5, name
    assert np.mean(splits["train"]["labels"]) == 0.5


def test_group_split_keeps_a_minimum_of_groups_per_split():
    """The 50-row group alone meets the test share exactly; a minimum of two groups adds the
    group that misses it least (4 rows), and every split keeps at least the minimum."""
    table = grouped_table([50, 350, 60, 9, 9, 9, 9, 4], [0.5] * 8)
    one = data.split_train_val_test(table, "labels", 0.1, 0.1, 0, group_column="prompt_name", min_groups=1)
    assert set(one["test"]["prompt_name"]) == {"prompt 0"}
    two = data.split_train_val_test(table, "labels", 0.1, 0.1, 0, group_column="prompt_name", min_groups=2)
    assert set(two["test"]["prompt_name"]) == {"prompt 0", "prompt 7"} and len(two["test"]) == 54
    assert all(len(set(two[s]["prompt_name"])) >= 2 for s in two)


def test_too_few_groups_for_the_minimum_is_a_clear_error():
    table = grouped_table([40] * 5, [0.5] * 5)
    with pytest.raises(ValueError, match=r"group_column='prompt_name' has 5 groups; train, validation and "
                                         r"test need at least 2 each \(6 in all\)"):
        data.split_train_val_test(table, "labels", 0.1, 0.1, 0, group_column="prompt_name")
    with pytest.raises(ValueError, match="min_groups must be a whole number >= 1"):
        data.split_train_val_test(table, "labels", 0.1, 0.1, 0, group_column="prompt_name", min_groups=0)
    splits = data.split_train_val_test(table, "labels", 0.1, 0.1, 0, group_column="prompt_name", min_groups=1)
    assert sum(len(s) for s in splits.values()) == 200


def test_group_split_with_many_groups_searches_random_orders():
    """Above the exhaustive limit (thousands of small groups, such as essay ids) the split still
    meets the row shares closely and keeps the classes balanced."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 8, 400)
    table = grouped_table(sizes, rng.uniform(0.2, 0.8, 400))
    splits = data.split_train_val_test(table, "labels", 0.1, 0.2, 0, group_column="prompt_name")
    n, share = len(table), np.mean(table["labels"])
    assert abs(len(splits["test"]) - 0.2 * n) <= 1 and abs(len(splits["validation"]) - 0.1 * n) <= 1
    for split in splits.values():
        assert abs(np.mean(split["labels"]) - share) < 0.01


def test_split_seed_repeats_redraw_whole_groups():
    """The closest split is one set of prompts whatever the seed (so repeating it over seeds
    would measure nothing); with the repeats' slack, seeds draw other prompts into test, still
    whole, at least the minimum per split, near the shares."""
    table = grouped_table([137, 101, 89, 73, 67, 61, 53, 47, 43, 37, 31, 29, 23, 18], [0.5] * 14)
    def test_groups(seed, slack):
        splits = data.split_train_val_test(table, "labels", 0.1, 0.1, seed, group_column="prompt_name",
                                           slack=slack)
        groups = {s: set(splits[s]["prompt_name"]) for s in splits}
        assert all(len(g) >= data.MIN_GROUPS_PER_SPLIT for g in groups.values())
        assert not (groups["train"] & groups["test"]) and not (groups["validation"] & (groups["test"] | groups["train"]))
        assert 0.05 * len(table) - 1 <= len(splits["test"]) <= 0.15 * len(table) + 1
        return frozenset(groups["test"])
    assert len({test_groups(seed, 0.0) for seed in range(5)}) == 1
    redrawn = {test_groups(seed, data.REPEAT_SLACK) for seed in range(5)}
    assert len(redrawn) >= 3, redrawn
    with pytest.raises(ValueError, match="slack must be >= 0"):
        data.split_train_val_test(table, "labels", 0.1, 0.1, 0, group_column="prompt_name", slack=-1)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, True, "0.1", None])
def test_a_split_size_that_is_no_fraction_is_named(value):
    data.check_fractions(eval_size=0.1)  # a fraction passes
    with pytest.raises(ValueError, match=f"validation_size must be a fraction between 0 and 1, got {value!r}"):
        data.check_fractions(eval_size=0.1, validation_size=value)
