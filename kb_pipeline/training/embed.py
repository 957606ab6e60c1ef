"""Training the embed adapter on (query, passage) pairs the KB yields (the task: tasks/embed.py).

Pairs are mined and screened in embed_pairs.py: uninformative queries (file-id titles, headings every
document shares, queries unrelated to their passage under the untuned backbone) are kept out of training
and validation and counted per source. The loss is one of sentence-transformers' reference losses run
inside our train_loop through a thin encoder over the AdapterSet (embed_encoder.py): GISTEmbedLoss with the
untuned backbone as guide (in-batch negatives it judges closer to the query than the positive are false
negatives and are masked), MultipleNegativesRankingLoss, or its cached (GradCache) variant; each optionally
with one hard negative per pair mined on the untuned vectors with FAISS. Validation is sentence-transformers'
InformationRetrievalEvaluator per source (summaries, headings, titles), each validation query ranked among
its source's validation and training passages; the gate compares the query-weighted nDCG@10 with the
untuned backbone's on the same rankings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from kb_pipeline.tasks.embed import NAME, embed_texts
from kb_pipeline.tasks.registry import load_task
from kb_pipeline.tasks.spec import TrainConfig
from kb_pipeline.training import embed_pairs
from kb_pipeline.training.base import InsufficientData, TrainResult, fresh_adapter, param_groups, set_mode, training_task
from kb_pipeline.training.embed_encoder import AdapterEncoder
from kb_pipeline.training.embed_pairs import SOURCES, MinedPair, accounting, as_mined, describe, kept
from kb_pipeline.training.loop import shuffled_batches, train_loop
from kb_pipeline.training.metrics import mrr_at_k, ndcg_at_k, recall_at_k

log = logging.getLogger(__name__)

TASK = NAME
K = 10
SCALE = 20.0  # sentence-transformers' default for MultipleNegativesRankingLoss (temperature 0.05)
LOSSES = ("gist", "mnrl", "cached-mnrl")
LOSS = "gist"  # masks the false negatives MNRL pushes away; tied MNRL on BBC validation (benchmarks/embed.py)
HARD_NEGATIVES = False
MINI_BATCH = 16  # cached-mnrl: texts per forward; the batch (and its negatives) may be far larger
METRICS = ("ndcg@10", "mrr@10", "recall@10")
TIE_BREAK = 0.01  # x validation loss / queries: the selection metric's tie-breaker (see evaluate_pairs)

data = embed_pairs.data  # the trainer's data: flagged pairs, validation padded with distractor passages


def check_data(train: Sequence[MinedPair], val: Sequence[MinedPair]) -> None:
    """Enough kept pairs to contrast (2 documents) and to validate on, else say what the screening dropped."""
    train, val = as_mined(train), as_mined(val)
    pairs, docs = kept(train), {p.doc_key for p in kept(train)}
    why = f" (pairs mined: {describe(accounting(train, val))})"
    if len(pairs) < 2 or len(docs) < 2:
        raise InsufficientData(
            f"embed needs at least 2 training pairs from 2 different documents (in-batch negatives); "
            f"found {len(pairs)} pairs from {len(docs)} documents{why}"
        )
    if not kept(val):
        raise InsufficientData(f"embed needs validation pairs to compare against the untuned backbone; found 0{why}")


# --------------------------------------------------------------------------- screening and hard negatives


def screen(adapters, pairs: Sequence[MinedPair], max_length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Untuned vectors of the pairs' queries and passages; flags pairs the similarity screen rejects."""
    queries = embed_texts(adapters, [p.query for p in pairs], None, max_length=max_length)
    passages = embed_texts(adapters, [p.passage for p in pairs], None, max_length=max_length)
    embed_pairs.screen_by_similarity(pairs, queries, passages, seed)
    return queries, passages


def mine_hard_negatives(
    pairs: Sequence[MinedPair], query_vecs: np.ndarray, passage_vecs: np.ndarray, top_k: int = 10, margin: float = 0.05
) -> list[str]:
    """Per pair, the passage of another document the untuned model ranks highest, below (1 - margin) x the positive.

    The margin is sentence-transformers' `relative_margin` of mine_hard_negatives: a "negative" nearly as
    close as the positive is more often an unlabelled positive (a follow-up article, a copied section).
    """
    import faiss

    rows: dict[tuple[str, str], int] = {}
    for i, p in enumerate(pairs):
        rows.setdefault((p.passage, p.doc_key), i)
    texts, docs = [text for text, _ in rows], [doc for _, doc in rows]
    index = faiss.IndexFlatIP(passage_vecs.shape[1])
    index.add(np.ascontiguousarray(passage_vecs[list(rows.values())], dtype=np.float32))
    sims, ids = index.search(np.ascontiguousarray(query_vecs, dtype=np.float32), min(top_k, len(texts)))
    out = []
    for i, p in enumerate(pairs):
        ceiling = float(query_vecs[i] @ passage_vecs[i]) * (1 - margin)
        found = [j for s, j in zip(sims[i], ids[i]) if j >= 0 and docs[j] != p.doc_key and s <= ceiling]
        # none close enough to be hard but clearly not a positive: any other document's passage still contrasts
        others = found or [j for j in range(len(texts)) if docs[j] != p.doc_key]
        out.append(texts[others[0] if found else others[i % len(others)]])
    return out


def no_duplicate_batches(items: Sequence, keys: Sequence[str], batch_size: int, epoch: int, seed: int) -> list[list]:
    """Shuffled batches holding at most one pair per document (sentence-transformers' NoDuplicatesBatchSampler):
    another pair of the same document would be a false in-batch negative. A last batch of one joins the one before."""
    order = [i for batch in shuffled_batches(list(range(len(items))), len(items) or 1, epoch, seed) for i in batch]
    batches: list[list[int]] = []
    while order:
        batch, docs, rest = [], set(), []
        for i in order:
            if len(batch) < batch_size and keys[i] not in docs:
                batch.append(i), docs.add(keys[i])
            else:
                rest.append(i)
        batches.append(batch)
        order = rest
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return [[items[i] for i in batch] for batch in batches]


# --------------------------------------------------------------------------- validation


def _rankings(val: Sequence[MinedPair]) -> dict[str, tuple[dict, dict, dict]]:
    """Per source: (queries, corpus, relevant) for InformationRetrievalEvaluator.

    Relevance is judged per document, as search returns documents: every passage of the query's document
    in that source's corpus is relevant (one for summaries and titles; a heading's sibling sections too).
    """
    out = {}
    for source in SOURCES:
        queries = [p for p in kept(val) if p.source == source]
        if not queries:
            continue
        passages = list(dict.fromkeys((p.passage, p.doc_key) for p in val if p.source == source))
        by_doc: dict[str, set[str]] = {}
        for i, (_, doc) in enumerate(passages):
            by_doc.setdefault(doc, set()).add(f"p{i}")
        out[source] = (
            {f"q{i}": p.query for i, p in enumerate(queries)},
            {f"p{i}": text for i, (text, _) in enumerate(passages)},
            {f"q{i}": by_doc[p.doc_key] for i, p in enumerate(queries)},
        )
    return out


def retrieval_metrics(
    query_vecs: np.ndarray, passage_vecs: np.ndarray, passage_docs: list[str], relevant: list[str]
) -> dict:
    """Rank passages (e.g. every chunk of a KB) per query by cosine, collapse to documents (first hit counts), and
    score against the query's document: how search ranks documents (used by benchmarks/enrich.py)."""
    sims = query_vecs @ passage_vecs.T  # (Q, P)
    totals = {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}
    for i, doc in enumerate(relevant):
        ranked = list(dict.fromkeys(passage_docs[j] for j in np.argsort(-sims[i], kind="stable")))
        totals["ndcg@10"] += ndcg_at_k(ranked, {doc}, K)
        totals["recall@10"] += recall_at_k(ranked, {doc}, K)
        totals["mrr@10"] += mrr_at_k(ranked, {doc}, K)
    return {name: value / max(1, len(relevant)) for name, value in totals.items()}


def evaluate_pairs(adapters, val: Sequence[MinedPair], task: str | None, max_length: int) -> dict:
    """nDCG/MRR/Recall@10 per source and over all kept validation queries (query-weighted), via the ST evaluator."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    encoder = AdapterEncoder(adapters, task, max_length, memo={})
    val = as_mined(val)
    by_source, totals, count = {}, dict.fromkeys((*METRICS, "val_loss"), 0.0), 0
    for source, (queries, corpus, relevant) in _rankings(val).items():
        evaluator = InformationRetrievalEvaluator(
            queries, corpus, relevant, mrr_at_k=[K], ndcg_at_k=[K], accuracy_at_k=[K], precision_recall_at_k=[K],
            map_at_k=[K], write_csv=False, name=source, score_functions={"cosine": cos_sim},
        )
        scores = evaluator(encoder)
        row = {m: float(scores[f"{source}_cosine_{m}"]) for m in METRICS}
        row["val_loss"] = ranking_loss(queries, corpus, relevant, encoder.memo)
        by_source[source] = {"queries": len(queries), "passages": len(corpus), **row}
        for m in totals:
            totals[m] += row[m] * len(queries)
        count += len(queries)
    overall = {m: value / max(1, count) for m, value in totals.items()}
    # ties in nDCG (small validation sets saturate) go to the lower validation loss, weighted by a fraction of
    # what one query moving from rank 1 to 2 is worth, so it hardly ever outweighs a real ranking difference
    overall["selection"] = overall["ndcg@10"] - TIE_BREAK * overall["val_loss"] / max(1, count)
    return overall | {"by_source": by_source}


def ranking_loss(queries: dict, corpus: dict, relevant: dict, memo: dict) -> float:
    """Mean softmax cross-entropy of each query over its ranking (cosine x SCALE), all relevant passages as targets."""
    ids = list(corpus)
    q = np.stack([memo[text] for text in queries.values()])  # (Q, H)
    c = np.stack([memo[corpus[cid]] for cid in ids])  # (C, H)
    logits = SCALE * q @ c.T  # (Q, C)
    top = logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    losses = []
    for i, qid in enumerate(queries):
        hits = [j for j, cid in enumerate(ids) if cid in relevant[qid]]
        hit = logits[i, hits]
        losses.append(log_z[i] - (np.log(np.exp(hit - hit.max()).sum()) + hit.max()))
    return float(np.mean(losses))


# --------------------------------------------------------------------------- training


def make_loss(name: str, adapters, max_length: int):
    """A sentence-transformers loss over the adapter (the guide of GIST is the untuned backbone)."""
    from sentence_transformers.sentence_transformer import losses as st

    model = AdapterEncoder(adapters, TASK, max_length)
    if name == "gist":
        guide = AdapterEncoder(adapters, None, max_length)
        return st.GISTEmbedLoss(model, guide, temperature=1 / SCALE)
    if name == "mnrl":
        return st.MultipleNegativesRankingLoss(model, scale=SCALE)
    if name == "cached-mnrl":
        return st.CachedMultipleNegativesRankingLoss(model, scale=SCALE, mini_batch_size=MINI_BATCH)
    raise ValueError(f"unknown embed loss {name!r}; expected one of {', '.join(LOSSES)}")


def train(
    adapters, train: list[MinedPair], val: list[MinedPair], config, cfg: TrainConfig, on_step=None, *,
    loss: str | None = None, hard_negatives: bool | None = None,
) -> TrainResult:
    """Screen the pairs, tune the adapter with a sentence-transformers loss, report per-source validation."""
    loss, hard_negatives = loss or LOSS, HARD_NEGATIVES if hard_negatives is None else hard_negatives
    train, val = as_mined(train), as_mined(val)
    check_data(train, val)
    candidates = kept([*train, *val])
    query_vecs, passage_vecs = screen(adapters, candidates, cfg.max_length, cfg.seed)
    counts = accounting(train, val)
    log.info("embed pairs: %s", describe(counts))
    check_data(train, val)
    pairs = kept(train)
    negatives: dict[int, str] = {}
    if hard_negatives:
        rows = {id(p): i for i, p in enumerate(candidates)}
        chosen = [rows[id(p)] for p in pairs]
        mined = mine_hard_negatives(pairs, query_vecs[chosen], passage_vecs[chosen])
        negatives = {id(p): text for p, text in zip(pairs, mined)}

    baseline = evaluate_pairs(adapters, val, None, cfg.max_length)
    fresh_adapter(adapters, TASK, config, cfg.seed)
    objective = make_loss(loss, adapters, cfg.max_length)
    tokenize = objective.model.preprocess

    def step(batch: list[MinedPair]) -> Tensor:
        set_mode(adapters, None, True)
        columns = [[p.query for p in batch], [p.passage for p in batch]]
        if negatives:
            columns.append([negatives[id(p)] for p in batch])
        return objective([tokenize(texts) for texts in columns], None)

    def batches(epoch: int) -> list[list[MinedPair]]:
        return no_duplicate_batches(pairs, [p.doc_key for p in pairs], cfg.batch_size, epoch, cfg.seed)

    def validate() -> dict:
        set_mode(adapters, None, False)
        return evaluate_pairs(adapters, val, TASK, cfg.max_length)

    with training_task(adapters, TASK):
        history = train_loop(param_groups(adapters, TASK, None, cfg), step, batches, validate, "selection", cfg, on_step)
    metrics = evaluate_pairs(adapters, val, TASK, cfg.max_length)
    metrics["beats_baseline"] = bool(metrics["ndcg@10"] >= baseline["ndcg@10"])
    metrics |= {"objective": loss, "hard_negatives": hard_negatives, "pairs": counts}
    log.info("embed validation nDCG@10 %.4f vs untuned %.4f (%s)", metrics["ndcg@10"], baseline["ndcg@10"],
             ", ".join(f"{s} {m['ndcg@10']:.3f} vs {baseline['by_source'][s]['ndcg@10']:.3f}"
                       for s, m in metrics["by_source"].items()))
    return TrainResult(
        task=TASK,
        config=config,
        train_config=cfg,
        head_state={},
        head_config={"pooling": "mean", "normalize": True, "max_length": cfg.max_length},
        metrics=metrics,
        baseline=baseline,
        history=history,
        adapter_params=adapters.num_parameters(TASK),
        head_params=0,
        backbone_params=adapters.backbone.num_parameters,
        primary_metric="ndcg@10",
    )


def evaluate(adapters, folder: Path, val: Sequence[MinedPair], cfg: TrainConfig, spec) -> dict:
    """A saved version's retrieval metrics on this run's (screened) validation pairs, for the gate."""
    val = as_mined(val)
    if any(not p.screened for p in kept(val)):
        screen(adapters, kept(val), cfg.max_length, cfg.seed)
    load_task(adapters, spec, folder)
    return evaluate_pairs(adapters, val, TASK, cfg.max_length)
