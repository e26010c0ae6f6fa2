"""Classic baselines to report beside every transformer, on the same split."""

from __future__ import annotations

import numpy as np


def tfidf_logreg_probabilities(train_texts, train_labels, test_texts, seed: int = 0) -> np.ndarray:
    """Fit TF-IDF (word 1-2 grams) + logistic regression; return P(class 1) for `test_texts`.

    On in-distribution essays this baseline is very strong, which is exactly why it belongs
    beside the transformer: a fine-tuned model that does not beat it has learned little.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
        LogisticRegression(max_iter=1000, random_state=seed),
    )
    pipeline.fit(list(train_texts), np.asarray(train_labels))
    return pipeline.predict_proba(list(test_texts))[:, 1]


def lead_turns(dialogues, n: int = 3) -> list[str]:
    """The first `n` turns of each dialogue, as its "summary": SAMSum's LEAD-3 baseline.

    Chats often open with the point ("Can you pick me up at 5?"), so this scores real ROUGE
    with no model at all; a fine-tuned summarizer has to beat it to have learned something.
    """
    leads = []
    for dialogue in dialogues:
        turns = [line.strip() for line in (dialogue or "").splitlines() if line.strip()]
        leads.append(" ".join(turns[:n]))
    return leads
