"""Text augmentation that needs nothing downloaded: word deletion, word swaps, sentence shuffling.

With little labelled data, noisy copies of the training texts make a classifier rely less on
exact word order and single words (EDA, Wei and Zou 2019, without its WordNet synonyms).
Augment only the training split, after splitting: an augmented copy of a test essay in
training would leak the test.
"""

from __future__ import annotations

import random
import re

OPERATIONS = ("delete", "swap", "shuffle_sentences")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def random_deletion(text: str, p: float, rng: random.Random) -> str:
    """Drop each word with probability p (always keeping at least one)."""
    words = text.split()
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept or [rng.choice(words)]) if words else text


def random_swap(text: str, p: float, rng: random.Random) -> str:
    """Swap round(p * words) random pairs of words (at least one swap for two or more words)."""
    words = text.split()
    if len(words) < 2:
        return text
    for _ in range(max(1, round(p * len(words)))):
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def shuffle_sentences(text: str, p: float, rng: random.Random) -> str:
    """The text's sentences in a random order (p is unused: every sentence moves freely)."""
    sentences = _SENTENCE_END.split(text.strip())
    rng.shuffle(sentences)
    return " ".join(sentences)


_FUNCTIONS = {"delete": random_deletion, "swap": random_swap, "shuffle_sentences": shuffle_sentences}


def check_operations(operations) -> list[str]:
    if not isinstance(operations, (list, tuple)):
        raise ValueError(f"augment must be a list of operations ({', '.join(OPERATIONS)}), got {operations!r}")
    unknown = [op for op in operations if op not in _FUNCTIONS]
    if unknown:
        raise ValueError(f"augment: unknown operation(s) {unknown}; expected any of {', '.join(OPERATIONS)}")
    return list(operations)


def augment_text(text: str, operations, p: float, rng: random.Random) -> str:
    for op in operations:
        text = _FUNCTIONS[op](text, p, rng)
    return text


def augment_dataset(dataset, text_column: str, operations, copies: int = 1, p: float = 0.1,
                    seed: int = 0):
    """The dataset plus `copies` augmented copies of every row (other columns copied as they are).

    Each copy applies every operation in `operations`, in order, with its own random draws.
    """
    from datasets import concatenate_datasets

    operations = check_operations(operations)
    if not operations:
        return dataset
    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"augment_copies must be a whole number >= 1, got {copies!r}")
    if not 0 <= p < 1:
        raise ValueError(f"augment_probability must lie in [0, 1), got {p!r}")
    rng = random.Random(seed)
    versions = [dataset]
    for _ in range(copies):
        texts = [augment_text(t, operations, p, rng) for t in dataset[text_column]]
        copy = dataset.remove_columns(text_column).add_column(text_column, texts)
        # Same column order and types (csv text loads as large_string) for concatenation.
        versions.append(copy.select_columns(dataset.column_names).cast(dataset.features))
    return concatenate_datasets(versions)
