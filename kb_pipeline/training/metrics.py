"""Evaluation metrics in plain Python/numpy, small enough to check by hand.

No sklearn here: every number a report shows should be traceable to a few lines
of code with a stated convention (zero-division -> 0.0, binary relevance, clipped
n-gram counts), so the tests can pin them with hand-computed values.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------- classification


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 from counts; 0.0 when undefined (no predictions and no truths), as sklearn's zero_division=0."""
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    if len(y_true) != len(y_pred):
        raise ValueError(f"accuracy: {len(y_true)} labels but {len(y_pred)} predictions")
    if not y_true:
        return 0.0
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def per_class_f1(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Iterable[Hashable] | None = None
) -> dict[Hashable, float]:
    """F1 of each class treated one-vs-rest; labels default to those seen in either sequence."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"per_class_f1: {len(y_true)} labels but {len(y_pred)} predictions")
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred), key=str)
    scores = {}
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(y_true, y_pred))
        fp = sum(t != label and p == label for t, p in zip(y_true, y_pred))
        fn = sum(t == label and p != label for t, p in zip(y_true, y_pred))
        scores[label] = _f1(tp, fp, fn)
    return scores


def macro_f1(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Iterable[Hashable] | None = None
) -> float:
    """Unweighted mean of per-class F1, so rare categories count as much as common ones.

    A class passed in `labels` that never occurs and is never predicted scores 0.0.
    """
    scores = per_class_f1(y_true, y_pred, labels)
    return sum(scores.values()) / len(scores) if scores else 0.0


def confusion_matrix(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable]
) -> list[list[int]]:
    """matrix[i][j] = how many items of true class labels[i] were predicted as labels[j]."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    return matrix


def micro_f1_multilabel(true_sets: Sequence[Iterable[Hashable]], pred_sets: Sequence[Iterable[Hashable]]) -> float:
    """F1 over all (item, label) decisions pooled; frequent tags dominate, as intended for 'how many tags are right'."""
    tp = fp = fn = 0
    for truth, pred in zip(true_sets, pred_sets, strict=True):
        truth, pred = set(truth), set(pred)
        tp += len(truth & pred)
        fp += len(pred - truth)
        fn += len(truth - pred)
    return _f1(tp, fp, fn)


def macro_f1_multilabel(
    true_sets: Sequence[Iterable[Hashable]],
    pred_sets: Sequence[Iterable[Hashable]],
    labels: Iterable[Hashable] | None = None,
) -> float:
    """Mean over labels of each label's F1; labels default to those seen in truths or predictions."""
    true_sets = [set(s) for s in true_sets]
    pred_sets = [set(s) for s in pred_sets]
    if labels is None:
        labels = sorted(set().union(*true_sets, *pred_sets), key=str)
    labels = list(labels)
    if not labels:
        return 0.0
    scores = []
    for label in labels:
        tp = sum(label in t and label in p for t, p in zip(true_sets, pred_sets, strict=True))
        fp = sum(label not in t and label in p for t, p in zip(true_sets, pred_sets))
        fn = sum(label in t and label not in p for t, p in zip(true_sets, pred_sets))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores)


def default_threshold_grid() -> np.ndarray:
    return np.round(np.arange(0.05, 0.951, 0.05), 2)


def tune_thresholds(scores: np.ndarray, targets: np.ndarray, grid: Iterable[float] | None = None) -> np.ndarray:
    """Per-label threshold (predict label when score >= t) maximising that label's F1 on validation data.

    Ties go to the threshold closest to 0.5 (the least surprising choice); labels with
    no positive example keep 0.5, since nothing in the data says where to put it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"tune_thresholds: scores {scores.shape} and targets {targets.shape} must be equal (N, L)")
    grid = default_threshold_grid() if grid is None else np.asarray(list(grid), dtype=np.float64)
    thresholds = np.full(scores.shape[1], 0.5)
    for label in range(scores.shape[1]):
        truth = targets[:, label]
        if not truth.any():
            continue
        best = (-1.0, 0.0)
        for t in grid:
            pred = scores[:, label] >= t
            f1 = _f1(int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum()))
            key = (f1, -abs(t - 0.5))
            if key > best:
                best, thresholds[label] = key, t
    return thresholds


def precision_recall(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """(precision, recall) from counts; 0.0 where undefined."""
    return (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)


def per_label_scores(
    true_sets: Sequence[Iterable[Hashable]], pred_sets: Sequence[Iterable[Hashable]], labels: Iterable[Hashable]
) -> dict[Hashable, dict[str, float]]:
    """Per label: precision, recall, F1, gold share and predicted share (of all items), support (gold count).

    Works for single-label data too (pass each item's label as a one-element set). The shares let a reader
    spot a label predicted far more often than it occurs.
    """
    true_sets, pred_sets = [set(s) for s in true_sets], [set(s) for s in pred_sets]
    n = len(true_sets)
    out = {}
    for label in labels:
        tp = sum(label in t and label in p for t, p in zip(true_sets, pred_sets, strict=True))
        fp = sum(label not in t and label in p for t, p in zip(true_sets, pred_sets))
        fn = sum(label in t and label not in p for t, p in zip(true_sets, pred_sets))
        precision, recall = precision_recall(tp, fp, fn)
        out[label] = {
            "precision": precision, "recall": recall, "f1": _f1(tp, fp, fn), "support": tp + fn,
            "gold_share": (tp + fn) / n if n else 0.0, "predicted_share": (tp + fp) / n if n else 0.0,
        }
    return out


def over_predicted(gold_share: float, predicted_share: float) -> bool:
    """A label predicted on more than twice its gold share plus 10 points: the "random tags" symptom."""
    return predicted_share > 2 * gold_share + 0.10


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE: sum over equal-width confidence bins of (bin share) * |accuracy - mean confidence| in the bin.

    Bins are (lo, hi] except the first, which also holds 0.0; 0.0 for no items.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape:
        raise ValueError(f"expected_calibration_error: {conf.shape} confidences but {hit.shape} outcomes")
    if not len(conf):
        return 0.0
    index = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += inside.mean() * abs(hit[inside].mean() - conf[inside].mean())
    return float(total)


def coverage_curve(
    confidences: Sequence[float], correct: Sequence[bool], thresholds: Iterable[float] | None = None
) -> list[dict[str, float]]:
    """For each threshold t: the share of items with confidence >= t (coverage) and their accuracy."""
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=bool)
    grid = np.round(np.arange(0.0, 0.951, 0.05), 2) if thresholds is None else thresholds
    out = []
    for t in grid:
        covered = conf >= t
        out.append({
            "threshold": float(t),
            "coverage": float(covered.mean()) if len(conf) else 0.0,
            "accuracy": float(hit[covered].mean()) if covered.any() else 0.0,
        })
    return out


# --------------------------------------------------------------------------- retrieval (binary relevance)


def ndcg_at_k(ranked_ids: Sequence[Hashable], relevant_ids: Iterable[Hashable], k: int = 10) -> float:
    """DCG = sum 1/log2(rank+1) over relevant hits in the top k, divided by the ideal DCG."""
    relevant = set(relevant_ids)
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, doc in enumerate(ranked_ids[:k]) if doc in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal


def recall_at_k(ranked_ids: Sequence[Hashable], relevant_ids: Iterable[Hashable], k: int = 10) -> float:
    relevant = set(relevant_ids)
    if not relevant:
        return 0.0
    return len(relevant & set(ranked_ids[:k])) / len(relevant)


def mrr_at_k(ranked_ids: Sequence[Hashable], relevant_ids: Iterable[Hashable], k: int = 10) -> float:
    """1/rank of the first relevant item within the top k, else 0."""
    relevant = set(relevant_ids)
    for i, doc in enumerate(ranked_ids[:k]):
        if doc in relevant:
            return 1.0 / (i + 1)
    return 0.0


# --------------------------------------------------------------------------- summarisation (ROUGE)


def tokenize(text: str) -> list[str]:
    """Lower-cased \\w+ tokens: the same tokenisation for every ROUGE number in the project."""
    return _WORD.findall(text.lower())


def _prf(overlap: int, n_candidate: int, n_reference: int) -> dict[str, float]:
    p = overlap / n_candidate if n_candidate else 0.0
    r = overlap / n_reference if n_reference else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"p": p, "r": r, "f": f}


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(candidate: str, reference: str, n: int = 1) -> dict[str, float]:
    """ROUGE-N with clipped counts: an n-gram matches at most as often as it occurs in the reference."""
    cand, ref = _ngrams(tokenize(candidate), n), _ngrams(tokenize(reference), n)
    overlap = sum((cand & ref).values())
    return _prf(overlap, sum(cand.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence length, O(len(a)*len(b)) time and O(len(b)) memory."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> dict[str, float]:
    """ROUGE-L: p = LCS/|candidate|, r = LCS/|reference|, f their harmonic mean (beta = 1)."""
    cand, ref = tokenize(candidate), tokenize(reference)
    return _prf(lcs_length(cand, ref), len(cand), len(ref))


def rouge_scores(candidate: str, reference: str) -> dict[str, float]:
    """The three F-measures reported for summaries."""
    return {
        "rouge1": rouge_n(candidate, reference, 1)["f"],
        "rouge2": rouge_n(candidate, reference, 2)["f"],
        "rougeL": rouge_l(candidate, reference)["f"],
    }


def mean_rouge(candidates: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus ROUGE as the mean of per-document F-measures."""
    if len(candidates) != len(references):
        raise ValueError(f"mean_rouge: {len(candidates)} candidates but {len(references)} references")
    if not candidates:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    per_doc = [rouge_scores(c, r) for c, r in zip(candidates, references)]
    return {key: sum(s[key] for s in per_doc) / len(per_doc) for key in per_doc[0]}


# --------------------------------------------------------------------------- uncertainty


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default); (0.0, 1.0) when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible for small n and for
    proportions near 0 or 1, which is what a small held-out test set gives.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: {successes} successes out of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
