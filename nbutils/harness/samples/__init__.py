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

from functools import partial
from typing import Callable

from nbutils.harness.samples import detection, dialogues, general_text, instructions, text2pandas

# File name under .cache/sample-data/ -> the function that writes it, given (path, seed).
SAMPLE_FILES: dict[str, Callable] = {
    "daigt_v2_train.csv": detection.write_detection_csv,
    "llm_detect_train_essays.csv": detection.write_competition_csv,  # a second detection source
    **{f"samsum/{split}.jsonl": partial(dialogues.write_dialogues_jsonl, split=split)
       for split in dialogues.SPLIT_SIZES},
    "guanaco_llama2_1k.jsonl": instructions.write_guanaco_jsonl,
    "chat_messages.jsonl": instructions.write_chat_jsonl,
    **{f"text2pandas/{split}.jsonl": partial(text2pandas.write_text2pandas_jsonl, split=split)
       for split in text2pandas.SPLITS},
    f"text2pandas/{text2pandas.TABLES_FILE}": text2pandas.write_tables_json,
    # The same task in the upstream single-column form (`Input`, `Pandas Query`).
    **{f"{text2pandas.UPSTREAM_DIR}/{split}.jsonl": partial(text2pandas.write_upstream_jsonl, split=split)
       for split in text2pandas.SPLITS},
    # General text for measuring forgetting. Not in corpus(): the random tiny models never read
    # it, so their tokenizers stay as they are (nbutils.harness.tiny_pretraining builds its own).
    **{f"general_text/{split}.jsonl": partial(general_text.write_general_text_jsonl, split=split)
       for split in general_text.SPLITS},
}


def corpus(seed: int = 0) -> list[str]:
    """Text to train the tiny models' tokenizers on: every sample data set's vocabulary."""
    return ([row["text"] for row in detection.detection_rows(seed=seed)] + dialogues.texts(seed)
            + instructions.texts(seed) + text2pandas.texts(seed))
