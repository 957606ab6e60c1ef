"""Scores per task, built from the plain metric functions in kb_pipeline.training.metrics.

Conventions (stated in the report too): macro-F1 averages the classes seen in the gold labels or the
predictions (sklearn's default); per-class F1 is listed for the gold classes; tag F1 is computed over
test documents that carry at least one gold tag; retrieval uses binary relevance with one relevant
document per query; ROUGE is the mean of per-document F-measures.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from kb_pipeline.config import Settings
from kb_pipeline.evaluation.split import GoldDoc
from kb_pipeline.training.baselines import most_frequent_category, most_frequent_tagset
from kb_pipeline.training.metrics import (
    accuracy,
    confusion_matrix,
    coverage_curve,
    expected_calibration_error,
    macro_f1,
    macro_f1_multilabel,
    mean_rouge,
    micro_f1_multilabel,
    mrr_at_k,
    ndcg_at_k,
    over_predicted,
    per_class_f1,
    per_label_scores,
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


# ----------------------------------------------------------------------------- classification


def score_classification(train: Sequence[GoldDoc], test: Sequence[GoldDoc], predicted: dict, outcome) -> dict:
    """Category and tag scores of the classify adapter and of the majority and TF-IDF + LR baselines."""
    from collections import Counter

    from kb_pipeline.evaluation import baselines
    from kb_pipeline.tasks.encoding import model_input

    train_cat = [d for d in train if d.category]
    test_cat = [d for d in test if d.category]
    truth = [d.category for d in test_cat]
    classes = sorted(set(truth))
    result: dict = {
        "n": len(test_cat),
        "classes": classes,
        "support": dict(sorted(Counter(truth).items())),
        "train_support": dict(sorted(Counter(d.category for d in train_cat).items())),
        "model": None,
        "baselines": {},
    }
    test_tagged = [d for d in test if d.tags]
    tag_truth = [d.tags for d in test_tagged]
    result["tags_n"] = len(test_tagged)

    if outcome.trained:
        pred = [predicted.get(d.doc_id, {}).get("category") or "(none)" for d in test_cat]
        tag_pred = [predicted.get(d.doc_id, {}).get("tags", ()) for d in test_tagged]
        tags = tag_scores(tag_truth, tag_pred) if test_tagged else None
        category = category_scores(truth, pred, classes)
        category["per_class"] = _per_label(per_label_scores([{t} for t in truth], [{p} for p in pred], classes))
        if test_tagged:
            labels = sorted(set().union(*[set(t) for t in tag_truth], *[set(p) for p in tag_pred]))
            tags["per_tag"] = _per_label(per_label_scores(tag_truth, tag_pred, labels))
            tags["distinct_tag_sets"] = len({frozenset(p) for p in tag_pred})
        result["model"] = {"label": "classify adapter", "category": category, "tags": tags}
        scores = [predicted.get(d.doc_id, {}).get("category_score") for d in test_cat]
        if test_cat and all(s is not None for s in scores):
            result["model"]["confidence"] = confidence_scores(
                scores, [t == p for t, p in zip(truth, pred)], outcome.metrics.get("abstain_below"))
    else:
        result["model_note"] = f"classify adapter not trained: {outcome.message}"

    majority = most_frequent_category([d.category for d in train_cat])
    tagset = most_frequent_tagset([d.tags for d in train_cat if d.tags])
    result["baselines"]["majority"] = {
        "label": "majority class",
        "prediction": {"category": majority, "tags": sorted(tagset)},
        "category": category_scores(truth, [majority] * len(truth), classes),
        "tags": tag_scores(tag_truth, [tagset] * len(tag_truth)) if test_tagged else None,
    }
    train_texts = [model_input(d.title, d.text) for d in train_cat]
    tfidf_pred = baselines.tfidf_logreg_categories(train_texts, [d.category for d in train_cat],
                                                   [model_input(d.title, d.text) for d in test_cat])
    tfidf_tags = None
    if test_tagged:
        tag_pred = baselines.tfidf_logreg_tags(train_texts, [d.tags for d in train_cat],
                                               [model_input(d.title, d.text) for d in test_tagged])
        tfidf_tags = tag_scores(tag_truth, tag_pred)
    result["baselines"]["tfidf_logreg"] = {
        "label": "TF-IDF + logistic regression",
        "category": category_scores(truth, tfidf_pred, classes),
        "tags": tfidf_tags,
    }
    return result


def _per_label(scores: dict) -> dict:
    """per_label_scores, rounded, with the over-prediction flag a reader scans for."""
    return {
        str(label): {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}
        | {"over_predicted": over_predicted(s["gold_share"], s["predicted_share"])}
        for label, s in scores.items()
    }


def confidence_scores(confidences: Sequence[float], correct: Sequence[bool], abstain_below: float | None) -> dict:
    """ECE of the category probabilities, and the coverage/accuracy curve with the adapter's abstain point."""
    chosen = None
    if abstain_below is not None:
        chosen = coverage_curve(confidences, correct, [float(abstain_below)])[0]
    return {
        "ece": expected_calibration_error(confidences, correct),
        "curve": coverage_curve(confidences, correct),
        "chosen": chosen,
    }


# ----------------------------------------------------------------------------- search


SEARCH_MODES = {  # key: (label, role, search mode, embedder)
    "keyword": ("keyword (FTS)", "system", "keyword", None),
    "bm25": ("BM25 (rank_bm25)", "baseline", None, None),
    "dense_untuned": ("dense, untuned backbone", "baseline", "dense", "untuned"),
    "dense_tuned": ("dense, embed adapter", "system", "dense", "tuned"),
    "hybrid_untuned": ("hybrid, untuned backbone", "baseline", "hybrid", "untuned"),
    "hybrid": ("hybrid, embed adapter", "system", "hybrid", "tuned"),
}


def score_search(scratch: Settings, docs: Sequence[GoldDoc], test: Sequence[GoldDoc], tuned, untuned, outcome) -> dict:
    """Each test document's gold summary is a query whose one relevant answer is that document."""
    from kb_pipeline.evaluation.baselines import bm25_rankings
    from kb_pipeline.evaluation.scratch import acl_groups
    from kb_pipeline.search.hybrid import Filters, Searcher
    from kb_pipeline.store.db import session_factory

    queries = [(d.summary, d.doc_id) for d in test if d.summary]
    relevant = [doc_id for _, doc_id in queries]
    texts = [q for q, _ in queries]
    embed_info = {
        "trained": outcome.trained,
        "version": outcome.version,
        "status": outcome.status,
        "promoted": outcome.status == "active",
        "reason": outcome.message,
    }
    result: dict = {"queries": len(queries), "documents": len(docs), "k": K, "embed_adapter": embed_info, "modes": {}}
    if not queries:
        result["note"] = "no test document has a gold summary, so there are no queries"
        return result
    filters = Filters(groups=acl_groups(scratch))  # every document is readable in an eval
    embedders = {"untuned": untuned, "tuned": tuned}
    searchers = {}
    uri = {d.doc_id: d.uri for d in docs}
    per_query = [{"path": uri[doc_id], "ranks": {}} for doc_id in relevant]
    with session_factory(scratch)() as session:
        for name, models in embedders.items():
            if models is not None:
                searchers[name] = Searcher(_cached_embed(models, texts), _index(session, models.embed_key))
        for key, (label, role, mode, embedder) in SEARCH_MODES.items():
            if key == "bm25":
                rankings = bm25_rankings([d.doc_id for d in docs], [d.text for d in docs], texts, K)
            elif embedder is not None and embedder not in searchers:
                result["modes"][key] = None
                continue
            else:
                searcher = searchers[embedder] if embedder is not None else Searcher()
                rankings = [
                    [r["doc_id"] for r in searcher.search(session, q, k=K, mode=mode, filters=filters)] for q in texts
                ]
            result["modes"][key] = {"label": label, "role": role} | retrieval_scores(rankings, relevant, K)
            for row, ranked, doc_id in zip(per_query, rankings, relevant):
                row["ranks"][key] = ranked.index(doc_id) + 1 if doc_id in ranked else None
    result["per_query"] = per_query  # rank of the right document per mode (None: not in the top k)
    return result


def _index(session, embed_key: str):
    """An in-memory exact index of the stored vectors of one embedder (the scratch KB holds two)."""
    from kb_pipeline.indexing.vector_index import VectorIndex
    from kb_pipeline.store import outputs

    ids, vectors = outputs.load_embeddings(session, embed_key)
    return VectorIndex.build(ids, vectors)


def _cached_embed(models, texts: Sequence[str]):
    """models.embed, with the known queries encoded once in batches rather than one search at a time."""
    vectors = models.embed(list(texts))
    known = {text: vectors[i] for i, text in enumerate(texts)}

    def embed(batch: Sequence[str]):
        import numpy as np

        if all(t in known for t in batch):
            return np.stack([known[t] for t in batch])
        return models.embed(list(batch))

    return embed


# ----------------------------------------------------------------------------- summaries


def score_summaries(test: Sequence[GoldDoc], predicted: dict, outcome, train: Sequence[GoldDoc] = ()) -> dict:
    """ROUGE-1/2/L of the summarise adapter beside two baselines over the same plain candidate sentences:
    the lead sentences within the summariser's budget, and the first N words, N the mean length in words of
    the training documents' gold summaries (of the test ones' when no training document has one)."""
    from kb_pipeline.evaluation.baselines import lead_summaries
    from kb_pipeline.tasks.summarise import lead_words

    scored = [d for d in test if d.summary]
    refs = [d.summary for d in scored]
    result: dict = {"n": len(scored), "model": None, "baselines": {}}
    if not scored:
        result["note"] = "no test document has a gold summary"
        return result
    if outcome.trained:
        candidates = [predicted.get(d.doc_id, {}).get("summary") or "" for d in scored]
        result["model"] = {"label": "summarise adapter"} | summary_scores(candidates, refs)
        result["examples"] = [
            {"path": d.uri, "gold": d.summary, "predicted": c} for d, c in list(zip(scored, candidates))[:3]
        ]
    else:
        result["model_note"] = f"summarise adapter not trained: {outcome.message}"
    lead = summary_scores(lead_summaries([d.text for d in scored]), refs)
    result["baselines"]["lead"] = {"label": "lead sentences"} | lead
    lengths = [len(d.summary.split()) for d in train if d.summary] or [len(r.split()) for r in refs]
    n = max(1, round(sum(lengths) / len(lengths)))
    words = summary_scores([lead_words(d.text, n) for d in scored], refs)
    result["baselines"]["lead_words"] = {"label": f"lead {n} words", "words": n} | words
    return result
