"""Fitting the lexical model (TF-IDF + logistic regression) that classify fuses with its heads.

Fitted with scikit-learn, saved as numbers (tasks/lexical.py applies it). Its out-of-fold probabilities
on the training documents are honest (each document scored by a model that never saw it), which is what
the fusion weight is chosen on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from kb_pipeline.tasks.lexical import PREFIX

MAX_FEATURES = 20_000  # vocabulary kept in the adapter's config (JSON): ~0.5 MB
C = 10.0  # inverse regularisation, as `kb eval`'s TF-IDF + LR baseline


def _vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True, max_features=MAX_FEATURES)


def _category_model(x, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000).fit(x, y)


def _tag_models(x, targets: np.ndarray) -> list:
    """One liblinear LR per tag; a tag constant in `targets` gets None (its constant is used instead)."""
    from sklearn.linear_model import LogisticRegression

    models = []
    for j in range(targets.shape[1]):
        column = targets[:, j]
        models.append(None if column.min() == column.max() else
                      LogisticRegression(C=C, solver="liblinear").fit(x, column))
    return models


def _tag_probabilities(models: list, targets: np.ndarray, x) -> np.ndarray:
    out = np.zeros((x.shape[0], len(models)))
    for j, model in enumerate(models):
        out[:, j] = model.predict_proba(x)[:, 1] if model is not None else float(targets[:, j].max())
    return out


def fit(texts: Sequence[str], categories: np.ndarray, num_categories: int, tag_targets: np.ndarray | None):
    """(config dict, tensors) of a lexical model on all the training texts; categories are class indices."""
    vectorizer = _vectorizer()
    x = vectorizer.fit_transform(list(texts))
    vocabulary = [None] * len(vectorizer.vocabulary_)
    for term, i in vectorizer.vocabulary_.items():
        vocabulary[i] = term
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _category_model(x, categories)
    coef = np.zeros((num_categories if num_categories > 2 else 1, x.shape[1]))
    bias = np.zeros(coef.shape[0])
    if num_categories > 2:  # classes absent from training keep -inf-like logits
        coef[:], bias[:] = 0.0, -30.0
        coef[model.classes_], bias[model.classes_] = model.coef_, model.intercept_
    else:
        coef[:], bias[:] = model.coef_, model.intercept_
    state = {
        PREFIX + "idf": torch.tensor(vectorizer.idf_, dtype=torch.float32),
        PREFIX + "category_coef": torch.tensor(coef, dtype=torch.float32),
        PREFIX + "category_bias": torch.tensor(bias, dtype=torch.float32),
    }
    if tag_targets is not None and tag_targets.shape[1]:
        models = _tag_models(x, tag_targets)
        tag_coef, tag_bias = np.zeros((len(models), x.shape[1])), np.zeros(len(models))
        for j, m in enumerate(models):
            if m is not None:
                tag_coef[j], tag_bias[j] = m.coef_[0], m.intercept_[0]
            else:  # a constant tag: a bias that gives its constant
                tag_bias[j] = 30.0 if tag_targets[:, j].max() else -30.0
        state[PREFIX + "tag_coef"] = torch.tensor(tag_coef, dtype=torch.float32)
        state[PREFIX + "tag_bias"] = torch.tensor(tag_bias, dtype=torch.float32)
    return {"vocabulary": vocabulary, "ngram_range": [1, 2], "sublinear_tf": True}, state


def out_of_fold(
    texts: Sequence[str], categories: np.ndarray, num_categories: int, tag_targets: np.ndarray | None,
    folds: int = 5, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, C) category and (N, L) tag probabilities of each text from a model fitted on the other folds."""
    from sklearn.model_selection import KFold

    n = len(texts)
    cat_p = np.full((n, num_categories), 1.0 / num_categories)
    tag_p = np.zeros(tag_targets.shape) if tag_targets is not None else None
    texts = list(texts)
    for fit_rows, score_rows in KFold(min(folds, n), shuffle=True, random_state=seed).split(texts):
        vectorizer = _vectorizer()
        x_fit = vectorizer.fit_transform([texts[i] for i in fit_rows])
        x_score = vectorizer.transform([texts[i] for i in score_rows])
        labels = categories[fit_rows]
        if len(set(labels.tolist())) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = _category_model(x_fit, labels)
            cat_p[score_rows] = 0.0
            cat_p[np.ix_(score_rows, model.classes_)] = model.predict_proba(x_score)
        if tag_p is not None and tag_p.shape[1]:
            fit_targets = tag_targets[fit_rows]
            tag_p[score_rows] = _tag_probabilities(_tag_models(x_fit, fit_targets), fit_targets, x_score)
    return cat_p, tag_p
