"""Small, deterministic sample data in the real data sets' schemas, one module per task.

No data set can be downloaded on the machines that build and test this collection, so the
smoke profile reads files made here. Each maker writes the real data set's exact column names,
so the notebooks read these files and the real data with the same code. The text is
template-generated, but with real signal (a model can learn the task) and real variety in
length and content. Same seed, same bytes.

To add a task: a module here with a `write_*(path, seed)` function and a `texts(seed)` function,
one entry in `SAMPLE_FILES`, and its texts in `corpus()`.
"""

from __future__ import annotations

from typing import Callable

from . import detection

# File name under .cache/sample-data/ -> the function that writes it, given (path, seed).
SAMPLE_FILES: dict[str, Callable] = {
    "daigt_v2_train.csv": detection.write_detection_csv,
}


def corpus(seed: int = 0) -> list[str]:
    """Text to train the tiny models' tokenizers on: every sample data set's vocabulary."""
    return [row["text"] for row in detection.detection_rows(seed=seed)]
