"""Classic baselines to report beside every transformer, on the same split."""

from __future__ import annotations

import numpy as np


# The baseline gets what every transformer gets: its settings chosen on the validation split.
# Word 1-2-grams catch a generator's phrasing; character 3-5-grams within words catch spelling,
# typos and punctuation habits (student essays have many, generated ones few). C is the inverse
# regularisation strength of the logistic regression.
TFIDF_FEATURES = {"word 1-2": {"analyzer": "word", "ngram_range": (1, 2)},
                  "char_wb 3-5": {"analyzer": "char_wb", "ngram_range": (3, 5)}}
TFIDF_C = (0.1, 1.0, 10.0)


class TunedTfidfBaseline:
    """TF-IDF + logistic regression with its n-grams and `C` chosen on the validation split.

    Each vectoriser is fitted on the training rows only (fitting it on test rows, as leaderboard
    entries did, would leak their vocabulary); every (features, C) pair is trained on them and
    scored by ROC AUC on the validation rows; the best is kept (ties: the first in grid order).
    Test rows choose nothing: `probabilities` scores them with the chosen model, fitted once.

    `settings` ({"features", "analyzer", "ngram_range", "C", "validation_roc_auc"}) and `grid`
    (every pair's validation ROC AUC) go into the run record; `validation_probabilities` are the
    chosen model's on the validation rows (the decision threshold is chosen on them).
    """

    def __init__(self, train_texts, train_labels, validation_texts, validation_labels, seed: int = 0,
                 features: dict | None = None, c_values=TFIDF_C):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        from nbutils.metrics import _roc_auc

        train_texts, validation_texts = list(train_texts), list(validation_texts)
        train_labels, validation_labels = np.asarray(train_labels), np.asarray(validation_labels)
        if len(np.unique(validation_labels)) < 2:
            raise ValueError("the validation split holds one class only: ROC AUC cannot choose the baseline's settings")
        self.grid, best = [], None
        for name, options in (features or TFIDF_FEATURES).items():
            vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, dtype=np.float32, **options)
            train_x = vectorizer.fit_transform(train_texts)  # vocabulary and idf: training rows only
            validation_x = vectorizer.transform(validation_texts)
            for c in c_values:
                model = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(train_x, train_labels)
                probs = model.predict_proba(validation_x)[:, 1]
                score = _roc_auc(validation_labels, probs)
                self.grid.append({"features": name, "C": float(c), "validation_roc_auc": score})
                if best is None or score > best[0]:
                    best = (score, name, options, float(c), vectorizer, model, probs)
        score, name, options, c, self._vectorizer, self._model, self.validation_probabilities = best
        self.settings = {"features": name, "analyzer": options["analyzer"],
                         "ngram_range": list(options["ngram_range"]), "C": c, "validation_roc_auc": score}

    def probabilities(self, texts) -> np.ndarray:
        """P(class 1) for `texts` from the chosen model (nothing is refitted)."""
        return self._model.predict_proba(self._vectorizer.transform(list(texts)))[:, 1]

    def describe(self) -> str:
        s = self.settings
        return (f"TF-IDF {s['features']}-grams, C={s['C']:g} (chosen on validation: ROC AUC "
                f"{s['validation_roc_auc']:.4f}, best of {len(self.grid)} settings)")


def tuned_tfidf_logreg(train_texts, train_labels, validation_texts, validation_labels, seed: int = 0,
                       **grid) -> TunedTfidfBaseline:
    """The TF-IDF + logistic regression baseline, tuned on validation (`TunedTfidfBaseline`).

    On in-distribution essays this baseline is very strong, which is exactly why it belongs
    beside the transformer: a fine-tuned model that does not beat it has learned little; and it
    is tuned as the transformers are (they get checkpoint selection, one of them a search), so
    a transformer's lead over it is not an artefact of an untuned baseline.
    """
    return TunedTfidfBaseline(train_texts, train_labels, validation_texts, validation_labels, seed, **grid)


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
