"""TF-IDF + logistic regression, stored as plain numbers beside the classify heads (no pickle).

Lexical evidence complements the neural heads on long documents, where a category's words are spread
through the text and TF-IDF + LR beats a pooled vector. It is fitted with scikit-learn at training time
(training/lexical.py); here it is only applied: the vocabulary (JSON, in ClassifyConfig.lexical) with the
idf weights and coefficients (tensors saved with the heads), so inference needs numpy alone. The features
are exactly sklearn's TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase, l2 norm).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from torch import Tensor

TOKEN = re.compile(r"(?u)\b\w\w+\b")  # sklearn's default token_pattern
PREFIX = "lexical."


def analyse(text: str) -> list[str]:
    """Lower-cased word unigrams then bigrams, as sklearn's word analyzer with ngram_range=(1, 2)."""
    tokens = TOKEN.findall(text.lower())
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


class LexicalModel:
    """Category probabilities (softmax) and tag probabilities (sigmoid) from TF-IDF features."""

    def __init__(self, config: dict, state: dict[str, Tensor]):
        self.vocabulary = {term: i for i, term in enumerate(config["vocabulary"])}
        self.idf = state[PREFIX + "idf"].double().numpy()  # (V,)
        self.cat_coef = state[PREFIX + "category_coef"].double().numpy()  # (C, V)
        self.cat_bias = state[PREFIX + "category_bias"].double().numpy()  # (C,)
        self.tag_coef = state[PREFIX + "tag_coef"].double().numpy() if PREFIX + "tag_coef" in state else None  # (L, V)
        self.tag_bias = state[PREFIX + "tag_bias"].double().numpy() if PREFIX + "tag_bias" in state else None  # (L,)

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """(N, V) dense TF-IDF rows (documents are few per batch; V is capped at training time)."""
        x = np.zeros((len(texts), len(self.idf)))
        for i, text in enumerate(texts):
            counts = Counter(j for term in analyse(text) if (j := self.vocabulary.get(term)) is not None)
            for j, n in counts.items():
                x[i, j] = (1.0 + np.log(n)) * self.idf[j]
            norm = np.linalg.norm(x[i])
            if norm > 0:
                x[i] /= norm
        return x

    def probabilities(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C) category probabilities and (N, L) tag probabilities (None without a tags model)."""
        x = self.features(texts)
        z = x @ self.cat_coef.T + self.cat_bias
        if z.shape[1] == 1:  # sklearn's binary case: one logit for the second class
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        z -= z.max(axis=1, keepdims=True)
        cat = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        tags = None
        if self.tag_coef is not None:
            tags = 1.0 / (1.0 + np.exp(-(x @ self.tag_coef.T + self.tag_bias)))
        return cat, tags
