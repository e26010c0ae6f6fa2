"""Limited data: download-free text augmentation, and extra data sources in one training set."""

import random
from collections import Counter

import pytest
from datasets import ClassLabel, Dataset, Value

from nbutils.remedies import augment, sources
from tests import fixtures

TEXT = "Cars pollute the air. Buses carry more people! Parks could replace parking lots."


def test_deletion_drops_words_and_keeps_the_order():
    out = augment.random_deletion(TEXT, 0.3, random.Random(0))
    words, kept = TEXT.split(), out.split()
    assert 0 < len(kept) < len(words)
    it = iter(words)
    assert all(w in it for w in kept), "the remaining words keep their order"
    assert augment.random_deletion("one", 0.99, random.Random(0)) == "one"


def test_swap_keeps_the_words_and_changes_the_order():
    out = augment.random_swap(TEXT, 0.2, random.Random(1))
    assert Counter(out.split()) == Counter(TEXT.split()) and out != TEXT


def test_sentence_shuffle_keeps_every_sentence():
    outs = {augment.shuffle_sentences(TEXT, 0.0, random.Random(s)) for s in range(10)}
    assert len(outs) > 1
    for out in outs:
        assert sorted(augment._SENTENCE_END.split(out)) == sorted(augment._SENTENCE_END.split(TEXT))


def test_augment_dataset_adds_copies_with_the_same_labels_and_is_seeded():
    table = Dataset.from_dict({"text": [TEXT, "short essay here ok."], "labels": [1, 0], "row_id": [0, 1]})
    table = table.cast_column("labels", ClassLabel(names=["human", "generated"]))
    table = table.cast_column("text", Value("large_string"))  # as csv files load
    out = augment.augment_dataset(table, "text", ["delete", "swap"], copies=2, p=0.2, seed=0)
    assert len(out) == 6 and out.features == table.features
    assert list(out["labels"]) == [1, 0] * 3 and list(out["row_id"]) == [0, 1] * 3
    assert list(out["text"])[:2] == [TEXT, "short essay here ok."]
    assert all(t != TEXT for t in list(out["text"])[2::2])
    again = augment.augment_dataset(table, "text", ["delete", "swap"], copies=2, p=0.2, seed=0)
    assert list(again["text"]) == list(out["text"])
    assert augment.augment_dataset(table, "text", []) is table


@pytest.mark.parametrize("kwargs, message", [
    ({"operations": ["synonyms"]}, r"unknown operation\(s\) \['synonyms'\]; expected any of delete, swap, shuffle_sentences"),
    ({"operations": "delete"}, "augment must be a list of operations"),
    ({"operations": ["delete"], "copies": 0}, "augment_copies must be a whole number >= 1"),
    ({"operations": ["delete"], "p": 1.0}, r"augment_probability must lie in \[0, 1\)"),
])
def test_bad_augmentation_settings_are_errors(kwargs, message):
    table = Dataset.from_dict({"text": [TEXT]})
    with pytest.raises(ValueError, match=message):
        augment.augment_dataset(table, "text", **kwargs)


def primary_train():
    table = Dataset.from_dict({"text": ["a b c", "d e f"], "prompt_name": ["p1", "p2"], "labels": [0, 1],
                               "row_id": [0, 1]})
    return table.cast_column("labels", ClassLabel(names=["human", "generated"]))


def test_extra_source_in_another_schema_joins_the_training_set(cache):
    path = str(fixtures.sample_data_dir(cache) / "llm_detect_train_essays.csv")
    train = sources.append_sources(primary_train(), [{"path": path, "label_column": "generated",
                                                      "name": "competition"}],
                                   "text", "label", primary_name="daigt_v2")
    counts = sources.source_counts(train)
    assert counts["daigt_v2"] == {"rows": 2, "generated": 1}
    assert counts["competition"]["rows"] == 120 and 0 < counts["competition"]["generated"] < 12
    extra = train.filter(lambda r: r["dataset"] == "competition")
    assert set(extra["prompt_name"]) == {None} and set(extra["row_id"]) == {None}
    assert train.features["labels"] == primary_train().features["labels"]


def test_extra_source_as_a_plain_path_needs_the_main_column_names(cache):
    path = str(fixtures.sample_data_dir(cache) / "llm_detect_train_essays.csv")
    with pytest.raises(KeyError, match=r"extra_sources\[0\].label_column='label' is not a column.*"
                                       "columns present: id, prompt_id, text, generated"):
        sources.append_sources(primary_train(), [path], "text", "label", primary_name="daigt_v2")
    with pytest.raises(FileNotFoundError, match=r"extra_sources\[1\]: data file not found"):
        sources.append_sources(primary_train(), [{"path": path, "label_column": "generated"}, "nope.csv"],
                               "text", "label", primary_name="daigt_v2")
    with pytest.raises(ValueError, match=r"extra_sources\[0\]: unknown key\(s\) \['label'\]"):
        sources.append_sources(primary_train(), [{"path": path, "label": "generated"}], "text", "label", "x")
