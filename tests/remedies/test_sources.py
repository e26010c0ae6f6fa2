"""Training rows that repeat held-out rows: an extra source's copies of test and validation
essays, and its essays of held-out prompts, are removed from training and reported."""

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset

from nbutils import data
from nbutils.remedies import sources

PROMPTS = ["Car-free cities", "Distance learning", "Phones and driving", "Summer projects",
           "Facial action coding system"]


def essays(n=100):
    """The main data: n essays on five prompts, each text unique."""
    table = Dataset.from_dict({
        "text": [f"Essay {i} on {PROMPTS[i % 5]}: cars, phones, {i * 7} words." for i in range(n)],
        "prompt_name": [PROMPTS[i % 5] for i in range(n)],
        "labels": [i % 2 for i in range(n)], "row_id": list(range(n))})
    return table.cast_column("labels", ClassLabel(names=["human", "generated"]))


@pytest.fixture
def splits():
    return data.split_train_val_test(essays(), "labels", 0.2, 0.2, 0, group_column="prompt_name", min_groups=1)


def planted_source(tmp_path, splits):
    """The competition's file, in its own schema (prompt_id, generated): 3 test essays copied
    with other case, spacing and line ends, 2 validation essays copied exactly, 4 new essays on
    a held-out prompt, and 5 new essays on training prompts."""
    test, val = splits["test"], splits["validation"]
    train_prompts = sorted(set(splits["train"]["prompt_name"]))
    held_prompt = test["prompt_name"][0]
    rows = [{"prompt_id": PROMPTS.index(t_prompt), "text": "  " + text.upper().replace(" ", "\r\n  ") + " ",
             "generated": 0} for text, t_prompt in zip(test["text"][:3], test["prompt_name"][:3])]
    rows += [{"prompt_id": PROMPTS.index(p), "text": text, "generated": 1}
             for text, p in zip(val["text"][:2], val["prompt_name"][:2])]
    rows += [{"prompt_id": PROMPTS.index(held_prompt), "text": f"A new essay {i} on a test prompt.", "generated": 0}
             for i in range(4)]
    rows += [{"prompt_id": PROMPTS.index(train_prompts[i % len(train_prompts)]),
              "text": f"A new essay {i} on a training prompt.", "generated": i % 2} for i in range(5)]
    path = tmp_path / "train_essays.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return {"path": str(path), "label_column": "generated", "name": "competition",
            "group_column": "prompt_id", "group_names": dict(enumerate(PROMPTS))}


@pytest.mark.parametrize("keys", [int, str], ids=["yaml-keys", "papermill-keys"])
def test_planted_copies_of_held_out_essays_are_removed_and_reported(tmp_path, splits, keys):
    """(Papermill writes a dict parameter's keys as strings: {0: ...} arrives as {"0": ...}.)"""
    entry = planted_source(tmp_path, splits)
    entry["group_names"] = {keys(k): v for k, v in entry["group_names"].items()}
    train = sources.append_sources(splits["train"], [entry], "text", "label", "daigt", group_column="prompt_name")
    held_out = {"validation": splits["validation"], "test": splits["test"]}
    kept, report = sources.remove_overlap(train, held_out, "text", "prompt_name", "daigt")

    assert report["competition"] == {"rows": 14, "same_text_as_validation": 2, "same_text_as_test": 3,
                                     "same_group_as_held_out": 9, "no_group": 0, "removed": 9, "kept": 5}
    assert report["daigt"]["removed"] == 0 and report["daigt"]["kept"] == len(splits["train"])
    held_keys = {sources.text_key(t) for split in held_out.values() for t in split["text"]}
    assert not held_keys & {sources.text_key(t) for t in kept["text"]}
    held_prompts = set(splits["validation"]["prompt_name"]) | set(splits["test"]["prompt_name"])
    assert not held_prompts & set(kept["prompt_name"])
    table = sources.overlap_table(report)
    assert table.loc["all", "removed"] == 9 and table.loc["competition", "same_text_as_test"] == 3


def test_copies_are_found_without_a_group_column(tmp_path, splits):
    """Split at random (no group column), only the text decides: the 5 copies go, the new
    essays on held-out prompts stay (no prompt is held out)."""
    entry = planted_source(tmp_path, splits)
    train = sources.append_sources(splits["train"], [entry], "text", "label", "daigt")
    kept, report = sources.remove_overlap(train, {"validation": splits["validation"], "test": splits["test"]},
                                          "text", "", "daigt")
    assert report["competition"]["removed"] == 5 and report["competition"]["kept"] == 9
    assert len(kept) == len(train) - 5


def test_an_extra_source_without_a_group_mapping_is_counted_as_unchecked(tmp_path, splits):
    entry = {k: v for k, v in planted_source(tmp_path, splits).items() if k not in ("group_column", "group_names")}
    train = sources.append_sources(splits["train"], [entry], "text", "label", "daigt", group_column="prompt_name")
    _, report = sources.remove_overlap(train, {"validation": splits["validation"], "test": splits["test"]},
                                       "text", "prompt_name", "daigt")
    assert report["competition"]["no_group"] == 14 and report["competition"]["removed"] == 5


def test_the_main_splits_own_duplicates_are_removed_too():
    """A training essay that is also a test essay (DAIGT v2 holds a few exact repeats)."""
    table = essays(40)
    train, test = table.select(range(30)), table.select(range(30, 40))
    train = Dataset.from_dict({**train.to_dict(), "text": train["text"][:-1] + [test["text"][0].lower()]},
                              features=train.features)
    kept, report = sources.remove_overlap(train, {"test": test}, "text")
    assert report == {"train": {"rows": 30, "same_text_as_test": 1, "same_group_as_held_out": 0, "no_group": 0,
                                "removed": 1, "kept": 29}}
    assert len(kept) == 29


def test_text_key_ignores_case_spacing_and_line_ends():
    assert sources.text_key("Cars are\r\nbad.  ") == sources.text_key("cars ARE bad.")
    assert sources.text_key("Cars are bad.") != sources.text_key("Cars are good.")


@pytest.mark.parametrize("entry, message", [
    ({"path": "x.csv", "group_names": {0: "a"}}, r"extra_sources\[0\] has group_names but no group_column"),
    ({"path": "x.csv", "group_column": "prompt_id", "group_names": ["a"]},
     r"extra_sources\[0\].group_names must map the source's group values"),
])
def test_bad_group_mappings_are_named(entry, message):
    with pytest.raises(ValueError, match=message):
        sources.append_sources(essays(4), [entry], "text", "label", "daigt", group_column="prompt_name")


def test_a_missing_group_column_of_the_source_is_named(tmp_path, splits):
    entry = {**planted_source(tmp_path, splits), "group_column": "prompt"}
    with pytest.raises(KeyError, match=r"extra_sources\[0\].group_column='prompt' is not a column"):
        sources.append_sources(splits["train"], [entry], "text", "label", "daigt", group_column="prompt_name")
