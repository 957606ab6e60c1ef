"""Decision thresholds that hold on small data: per-tag cut-offs, the category temperature and the abstain point.

All three are tuned on out-of-fold probabilities of the training documents plus the validation documents'
probabilities (training/classify.py), never on a handful of validation documents alone: with 16 documents
a per-tag F1 search lands near 0.1 and every document gets the same tags. So a tag's threshold
- is only searched where the precision of the tag stays above a floor and the tag is not predicted on more
  than twice its share plus 10 points (the "random tags" symptom);
- is shrunk toward 0.5 the more, the fewer positive examples it was tuned on (F1 minus a distance penalty);
- is NEVER (no prediction) for a tag with too few examples or that no threshold predicts with that precision.
"""

from __future__ import annotations

import math

import numpy as np

from kb_pipeline.training.metrics import _f1, default_threshold_grid, over_predicted

NEVER = 1.01  # a threshold no probability reaches: the tag is kept in the head but never applied
DEFAULT_THRESHOLD = 0.5
MIN_TAG_SUPPORT = 4  # positive examples below which a tag is not predicted at all
MIN_PRECISION = 0.5  # a tag's precision on the tuning data at its threshold
SHRINK_PRIOR = 8.0  # pseudo-examples pulling a threshold toward DEFAULT_THRESHOLD
TARGET_ACCURACY = 0.9  # accuracy the covered (not abstained) documents should keep
MIN_COVERAGE = 0.6  # never abstain on more than 40% of the documents


def tag_thresholds(
    scores: np.ndarray,
    targets: np.ndarray,
    *,
    min_support: int = MIN_TAG_SUPPORT,
    min_precision: float = MIN_PRECISION,
    prior: float = SHRINK_PRIOR,
    grid=None,
) -> np.ndarray:
    """Per-tag thresholds (L,) from tuning probabilities (N, L) and 0/1 targets (N, L); NEVER for unusable tags."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"tag_thresholds: scores {scores.shape} and targets {targets.shape} must be equal (N, L)")
    grid = default_threshold_grid() if grid is None else np.asarray(list(grid), dtype=np.float64)
    out = np.full(scores.shape[1], NEVER)
    for j in range(scores.shape[1]):
        out[j] = _one_tag(scores[:, j], targets[:, j], grid, min_support, min_precision, prior)
    return out


def _allowed(score: np.ndarray, truth: np.ndarray, t: float, min_precision: float) -> bool:
    pred = score >= t
    if not pred.any():
        return True
    precision = (pred & truth).sum() / pred.sum()
    return precision >= min_precision and not over_predicted(truth.mean(), pred.mean())


def _one_tag(score, truth, grid, min_support, min_precision, prior) -> float:
    """Maximise F1 - shrink * |t - 0.5| over the allowed thresholds, shrink = 0.5 * prior / (positives + prior):
    with few positives a threshold only leaves 0.5 for a clear gain in F1."""
    positives = int(truth.sum())
    if positives < min_support:
        return NEVER
    shrink = 0.5 * prior / (positives + prior)
    best, best_t = (0.0, 0.0), None
    for t in grid:
        if not _allowed(score, truth, t, min_precision):
            continue
        pred = score >= t
        f1 = _f1(int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum()))
        key = (f1 - shrink * abs(t - DEFAULT_THRESHOLD), -abs(t - DEFAULT_THRESHOLD))
        if f1 > 0 and (best_t is None or key > best):
            best, best_t = key, float(t)
    return NEVER if best_t is None else best_t


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T) (Guo et al., 2017); 1.0 for no data."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return 1.0

    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(labels)), labels].mean())

    grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 121))
    best = min(grid, key=nll)
    lo, hi = best / 1.08, best * 1.08  # refine around the best grid point (golden-section on log T)
    for _ in range(40):
        a, b = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float((lo + hi) / 2)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def abstain_threshold(
    confidences: np.ndarray, correct: np.ndarray, target: float = TARGET_ACCURACY, min_coverage: float = MIN_COVERAGE
) -> float:
    """The lowest confidence cut-off whose covered documents keep accuracy >= target (0.0: never abstain).

    A cut-off never covers less than `min_coverage` of the documents (a few unlucky tuning documents must
    not send most of the KB to review); if none reaching the target does, the one with the best covered
    accuracy that covers enough. Ties in confidence move together: the cut-off is an observed confidence.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=bool)
    if not len(conf) or hit.mean() >= target:
        return 0.0
    order = np.argsort(-conf, kind="stable")
    covered_accuracy = np.cumsum(hit[order]) / np.arange(1, len(conf) + 1)
    candidates = [
        i for i in range(len(conf))
        if (i == len(conf) - 1 or conf[order[i]] > conf[order[i + 1]]) and (i + 1) >= min_coverage * len(conf)
    ]
    reaching = [i for i in candidates if covered_accuracy[i] >= target]
    if reaching:
        return float(conf[order[max(reaching)]])
    best = max(candidates, key=lambda i: (covered_accuracy[i], i))
    return 0.0 if best == len(conf) - 1 else float(conf[order[best]])
