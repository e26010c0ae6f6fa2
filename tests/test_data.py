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
