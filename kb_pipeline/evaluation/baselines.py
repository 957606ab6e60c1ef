"""Baselines scored on the same split as the trained adapters, each beside the metric it is a baseline for.

| baseline | scored on | what it does |
| --- | --- | --- |
| majority | category accuracy / F1; tags F1 | the most common training category; the most common tag set |
| TF-IDF + LR | category accuracy / F1; tags F1 | word 1-2-gram TF-IDF, logistic regression (tags: one per tag, |
| | | thresholds tuned by 3-fold CV) |
| BM25 | search | Okapi BM25 over whole document texts (rank_bm25), the summary as the query |
| untuned backbone | search | dense and hybrid search with the backbone's own mean-pooled embeddings (in run.py) |
| lead | summaries | the first sentences within the summariser's budget |

Every baseline sees exactly what the model sees: the same documents and texts (title + body for
classification, chunked body for search), trained on the training side only.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

from kb_pipeline.tasks.classify import MIN_TAG_COUNT
from kb_pipeline.tasks.summarise import lead_summary
from kb_pipeline.training.metrics import tokenize


def _vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=100_000, lowercase=True)


def tfidf_logreg_categories(
    train_texts: Sequence[str], train_categories: Sequence[str], test_texts: Sequence[str]
) -> list[str]:
    """TF-IDF features + multinomial logistic regression (C=10, lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    if not test_texts:
        return []
    vectorizer = _vectorizer()
    x_train = vectorizer.fit_transform(train_texts)
    model = LogisticRegression(C=10.0, max_iter=2000)
    model.fit(x_train, list(train_categories))
    return [str(c) for c in model.predict(vectorizer.transform(test_texts))]


def tfidf_logreg_tags(
    train_texts: Sequence[str], train_tagsets: Sequence[Sequence[str]], test_texts: Sequence[str], folds: int = 3
) -> list[frozenset[str]]:
    """One logistic regression (C=10, liblinear) per tag seen at least MIN_TAG_COUNT times in training.

    Like the classify adapter, which tunes a threshold per tag on its validation documents, each tag's
    threshold is tuned (tune_thresholds) on out-of-fold probabilities of the training documents;
    a fixed 0.5 would almost never fire for rare tags and make this baseline a straw man.
    """
    import numpy as np
    from sklearn.model_selection import KFold

    from kb_pipeline.training.metrics import tune_thresholds

    counts = Counter(t for tags in train_tagsets for t in set(tags))
    vocabulary = sorted(t for t, n in counts.items() if n >= MIN_TAG_COUNT)
    if not vocabulary or not test_texts:
        return [frozenset() for _ in test_texts]
    vectorizer = _vectorizer()
    x_train, x_test = vectorizer.fit_transform(train_texts), vectorizer.transform(test_texts)
    y = np.array([[t in tags for t in vocabulary] for tags in train_tagsets], dtype=np.int64)  # (N, L)
    out_of_fold = np.zeros(y.shape)
    for fit_rows, score_rows in KFold(min(folds, len(train_texts)), shuffle=True, random_state=0).split(x_train):
        out_of_fold[score_rows] = _tag_probabilities(x_train[fit_rows], y[fit_rows], x_train[score_rows])
    thresholds = tune_thresholds(out_of_fold, y)
    probabilities = _tag_probabilities(x_train, y, x_test)  # (M, L)
    return [frozenset(t for j, t in enumerate(vocabulary) if row[j] >= thresholds[j]) for row in probabilities]


def _tag_probabilities(x_fit, y_fit, x_score):
    """(rows of x_score, tags) probabilities; a tag constant in y_fit gets that constant."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    out = np.zeros((x_score.shape[0], y_fit.shape[1]))
    for j in range(y_fit.shape[1]):
        column = y_fit[:, j]
        if column.min() == column.max():
            out[:, j] = float(column[0])
            continue
        model = LogisticRegression(C=10.0, solver="liblinear")  # binary: ~10x faster than lbfgs here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x_fit, column)
        out[:, j] = model.predict_proba(x_score)[:, 1]
    return out


def bm25_rankings(
    doc_ids: Sequence[int], doc_texts: Sequence[str], queries: Sequence[str], k: int = 10
) -> list[list[int]]:
    """Top-k document ids per query under Okapi BM25 (k1=1.5, b=0.75), ties broken by id."""
    from rank_bm25 import BM25Okapi

    corpus = [tokenize(text) or [""] for text in doc_texts]  # BM25Okapi divides by the mean length
    model = BM25Okapi(corpus)
    out = []
    for query in queries:
        scores = model.get_scores(tokenize(query))
        order = sorted(range(len(doc_ids)), key=lambda i: (-scores[i], doc_ids[i]))
        out.append([doc_ids[i] for i in order[:k]])
    return out


def lead_summaries(texts: Sequence[str]) -> list[str]:
    """The first sentences within the extractive summariser's budget (3 sentences, 60 words)."""
    return [lead_summary(text) for text in texts]
