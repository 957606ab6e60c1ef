"""Scores per task, built from the plain metric functions in kb_pipeline.training.metrics.

Conventions (stated in the report too): macro-F1 averages the classes seen in the gold labels or the
predictions (sklearn's default); per-class F1 is listed for the gold classes; tag F1 is computed over
test documents that carry at least one gold tag; retrieval uses binary relevance with one relevant
document per query; ROUGE is the mean of per-document F-measures.
"""

from __future__ import annotations

from typing import Hashable, Sequence

from kb_pipeline.training.metrics import (
    accuracy,
    confusion_matrix,
    macro_f1,
    macro_f1_multilabel,
    mean_rouge,
    micro_f1_multilabel,
    mrr_at_k,
    ndcg_at_k,
    per_class_f1,
    recall_at_k,
    wilson_interval,
)

K = 10


def category_scores(truth: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> dict:
    """accuracy (+ its 95% Wilson interval), macro-F1, per-class F1 over `classes`, and the confusion matrix."""
    correct = sum(t == p for t, p in zip(truth, pred))
    labels = sorted(set(classes) | set(pred))
    return {
        "n": len(truth),
        "accuracy": accuracy(truth, pred),
        "accuracy_ci95": list(wilson_interval(correct, len(truth))),
        "macro_f1": macro_f1(truth, pred),
        "per_class_f1": {str(c): f for c, f in per_class_f1(truth, pred, classes).items()},
        "confusion_labels": labels,
        "confusion_matrix": confusion_matrix(truth, pred, labels),
    }


def tag_scores(truth: Sequence[Sequence[Hashable]], pred: Sequence[Sequence[Hashable]]) -> dict:
    truth_sets, pred_sets = [set(t) for t in truth], [set(p) for p in pred]
    return {
        "n": len(truth_sets),
        "micro_f1": micro_f1_multilabel(truth_sets, pred_sets),
        "macro_f1": macro_f1_multilabel(truth_sets, pred_sets),
    }


def retrieval_scores(rankings: Sequence[Sequence[Hashable]], relevant: Sequence[Hashable], k: int = K) -> dict:
    """Mean nDCG@k, MRR@k, Recall@1 and Recall@k with one relevant document per query."""
    n = len(relevant)
    if n == 0:
        return {"n": 0, f"ndcg@{k}": 0.0, f"mrr@{k}": 0.0, "recall@1": 0.0, f"recall@{k}": 0.0}
    sums = {f"ndcg@{k}": 0.0, f"mrr@{k}": 0.0, "recall@1": 0.0, f"recall@{k}": 0.0}
    for ranked, doc in zip(rankings, relevant, strict=True):
        ranked = list(ranked)
        sums[f"ndcg@{k}"] += ndcg_at_k(ranked, {doc}, k)
        sums[f"mrr@{k}"] += mrr_at_k(ranked, {doc}, k)
        sums["recall@1"] += recall_at_k(ranked, {doc}, 1)
        sums[f"recall@{k}"] += recall_at_k(ranked, {doc}, k)
    scores = {"n": n} | {name: total / n for name, total in sums.items()}
    hits = round(scores[f"recall@{k}"] * n)
    scores[f"recall@{k}_ci95"] = list(wilson_interval(hits, n))
    return scores


def summary_scores(candidates: Sequence[str], references: Sequence[str]) -> dict:
    return {"n": len(references)} | mean_rouge(candidates, references)
