"""Hybrid search: keyword (the database's full-text engine) + dense (FAISS), fused by reciprocal rank.

Filters and access control come first: keyword hits (search/keyword.py) and the set of chunk ids
handed to FAISS (as an IDSelector) both contain only chunks the user may read and that match the
tag/category filters, so k results come back whenever k allowed documents exist and nothing
forbidden can be ranked at all. The allowed set is cached per (groups, filters) while the KB's
search generation is unchanged (search/allowed.py), so a query does not list every readable chunk.
A hybrid query encodes its text on a worker thread while the keyword SQL runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import bindparam, literal, select, union_all
from sqlalchemy.orm import Session

from kb_pipeline.search.allowed import Allowed, AllowedSets
from kb_pipeline.search.filters import (  # noqa: F401  (Filters & co. are imported from here by callers)
    Filters,
    allowed_condition,
    allowed_set,
    filter_key,
)
from kb_pipeline.search.keyword import MAX_QUERY_TERMS, TermCounts, keyword_hits, query_terms  # noqa: F401
from kb_pipeline.store.schema import Chunk, Document, GoldLabel, GoldTag, PredictedLabel, PredictedSummary, ReviewLabel

RRF_K = 60  # the constant from Cormack et al.; damps the difference between top ranks
MODES = ("hybrid", "dense", "keyword")


from kb_pipeline.errors import SearchError  # noqa: E402,F401  (the one error type)


@dataclass
class Hit:
    doc_id: int
    chunk_id: int
    score: float
    ranks: dict = field(default_factory=dict)


def dense_hits(index, query_vector: np.ndarray, allowed: Allowed, limit: int) -> list[tuple[int, int, float]]:
    """(chunk id, doc id, cosine) best first among `allowed` chunks; owners come from the set, not SQL."""
    if not len(allowed):
        return []
    query = query_vector.reshape(1, -1).astype(np.float32)
    scores, ids = index.search(query, min(limit, len(allowed)), allowed.chunk_ids)
    keep = ids[0] >= 0
    found, sims = ids[0][keep], scores[0][keep]
    owners = allowed.owners(found)
    return [(int(c), int(d), float(v)) for c, d, v in zip(found, owners, sims)]


_POOL: ThreadPoolExecutor | None = None


def _done(fn, *args) -> Future:
    """`fn(*args)` run now, as a finished Future (the sequential twin of submitting it to the pool)."""
    future: Future = Future()
    future.set_result(fn(*args))
    return future


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kb-query")
    return _POOL


def fuse(ranked_lists: dict[str, list[tuple[int, int, float]]], k: int) -> list[Hit]:
    """Reciprocal rank fusion per document; each document's best-ranked chunk represents it."""
    hits: dict[int, Hit] = {}
    for mode, ranked in ranked_lists.items():
        seen: set[int] = set()
        for chunk_id, doc_id, _ in ranked:
            if doc_id in seen:
                continue  # a document's first (best) chunk in this list sets its rank
            seen.add(doc_id)
            rank = len(seen)
            hit = hits.setdefault(doc_id, Hit(doc_id, chunk_id, 0.0))
            hit.score += 1.0 / (RRF_K + rank)
            if not hit.ranks or rank < min(hit.ranks.values()):
                hit.chunk_id = chunk_id
            hit.ranks[mode] = rank
    return sorted(hits.values(), key=lambda h: (-h.score, h.doc_id))[:k]


def search(
    session: Session, query: str, *, k: int = 10, mode: str = "hybrid", filters: Filters = Filters(),
    index=None, embed=None, allowed_sets: AllowedSets | None = None, parallel: bool = True,
    term_counts: TermCounts | None = None,
) -> list[dict]:
    """Top-k documents for `query`; `embed(texts) -> (N, dim)` and `index` are needed for dense modes.

    `allowed_sets` (a Searcher's) caches the allowed chunk set between queries, which keyword search then filters
    its rows with; without it each dense query lists the set with SQL and keyword search joins the filter SQL.
    `term_counts` caches the word counts keyword search uses to skip near-universal words. With `parallel`, the
    query is encoded on a worker thread while the session looks up the set and runs the keyword SQL (sessions
    never leave the calling thread); that pays when a core is idle, and costs GIL hand-offs when every core is
    busy (benchmarks/query_path.py measures both).
    """
    if mode not in MODES:
        raise SearchError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if k < 1:
        raise SearchError("k must be at least 1")
    depth = max(50, 5 * k)
    lists: dict[str, list] = {}
    encoded = None
    if mode in ("hybrid", "dense"):
        # dense alone has nothing to overlap but a cache lookup: only hybrid hands the encoding to a thread
        encoded = _pool().submit(embed, [query]) if parallel and mode == "hybrid" else _done(embed, [query])
    try:
        allowed = None
        if allowed_sets is not None:
            allowed = allowed_sets.get(session, filters, filter_key(filters))
        elif encoded is not None:
            allowed = allowed_set(session, filters)
        if mode in ("hybrid", "keyword"):
            lists["keyword"] = keyword_hits(session, query, filters, depth, allowed=allowed, counts=term_counts)
    except BaseException:
        if encoded is not None:
            wait([encoded])  # the worker is done before the error reaches the caller
        raise
    if encoded is not None:
        vector = encoded.result()[0]
        while True:  # widen until k distinct documents or every allowed chunk was ranked
            ranked = dense_hits(index, vector, allowed, depth)
            if len({d for _, d, _ in ranked}) >= k or depth >= len(allowed):
                break
            depth *= 4
        lists["dense"] = ranked
    hits = fuse(lists, k)
    return describe(session, hits)


@dataclass
class Searcher:
    """What dense and hybrid search need beside the session: an embedder for queries and the index of its vectors.

    `open_searcher` builds the usual one (active adapters + live index) for `kb search`, the flows and the web;
    `kb eval` builds its own over in-memory indexes. Keyword-only search needs neither (Searcher()).
    """

    embed: Callable[[Sequence[str]], np.ndarray] | None = None
    index: object | None = None
    allowed: AllowedSets = field(default_factory=lambda: AllowedSets(allowed_set), repr=False)
    parallel: bool = True  # encode the query on a worker thread while the keyword SQL runs
    terms: TermCounts = field(default_factory=TermCounts, repr=False)

    def search(self, session: Session, query: str, *, k: int = 10, mode: str = "hybrid",
               filters: Filters = Filters()) -> list[dict]:
        return search(session, query, k=k, mode=mode, filters=filters, index=self.index, embed=self.embed,
                      allowed_sets=self.allowed, parallel=self.parallel, term_counts=self.terms)


def open_searcher(settings, models=None, *, fast_path: str = "background") -> Searcher:
    """The task models' query embedder (loaded unless given) and the live index of its vectors.

    fast_path: "background" (queries use torch until the ONNX encoder is exported, then onnxruntime; an
    exported file is reused at once), "wait" (export now if needed: a one-off ~2-10 s, then every query is
    fast), "cached" (the file `kb enrich` exported, else torch; for one-shot processes) or "off" (torch
    only). See search/query_encoder.py.
    """
    from kb_pipeline.enrich.shared_pass import load_task_models
    from kb_pipeline.indexing.sync import load_live_index
    from kb_pipeline.search.query_encoder import query_embedder

    if fast_path not in ("background", "wait", "cached", "off"):
        raise ValueError(f"fast_path must be 'background', 'wait', 'cached' or 'off', not {fast_path!r}")
    models = models or load_task_models(settings)
    embed = models.embed
    if fast_path != "off":
        embed = query_embedder(settings, models, background=fast_path == "background", build=fast_path != "cached").embed
    return Searcher(embed, load_live_index(settings, models.embed_key))


# Built once: a search describes its results with these two statements, and building a select() per query
# cost more than running it (~1.5 ms of a 6 ms describe here).
_RESULT_ROWS = (
    select(Chunk.id, Document.id, Document.path, Document.title, Chunk.text, GoldLabel.summary, PredictedSummary.summary)
    .join(Document, Document.id == Chunk.document_id)
    .outerjoin(GoldLabel, GoldLabel.document_id == Document.id)
    .outerjoin(PredictedSummary, PredictedSummary.document_id == Document.id)
    .where(Chunk.id.in_(bindparam("chunk_ids", expanding=True)))
)
_DOC_IDS = bindparam("doc_ids", expanding=True)
_TAG_ROWS = union_all(  # (document, origin, tag, score): front matter, review verdicts, applied predictions
    select(GoldTag.document_id, literal("front"), GoldTag.tag, literal(0.0)).where(GoldTag.document_id.in_(_DOC_IDS)),
    select(ReviewLabel.document_id, ReviewLabel.verdict, ReviewLabel.label, literal(0.0))
    .where(ReviewLabel.document_id.in_(_DOC_IDS), ReviewLabel.kind == "tag"),
    select(PredictedLabel.document_id, literal("predicted"), PredictedLabel.label, PredictedLabel.score)
    .where(PredictedLabel.document_id.in_(_DOC_IDS), PredictedLabel.kind == "tag", PredictedLabel.status == "applied"),
)


def describe(session: Session, hits: Sequence[Hit]) -> list[dict]:
    """Result rows: doc id, absolute path, title, score, matching chunk snippet, summary and tags."""
    if not hits:
        return []
    connection = session.connection()  # Core, not the ORM: these rows are tuples, and the ORM layer costs ~1 ms
    rows = connection.execute(_RESULT_ROWS, {"chunk_ids": [h.chunk_id for h in hits]}).all()
    found = {(chunk_id, doc_id): rest for chunk_id, doc_id, *rest in rows}
    tags = document_tags(session, [h.doc_id for h in hits])
    out = []
    for h in hits:
        row = found.get((h.chunk_id, h.doc_id))
        if row is None:  # deleted between ranking and now
            continue
        path, title, chunk_text, gold_summary, predicted_summary = row
        out.append({
            "doc_id": h.doc_id,
            "path": path,
            "title": title,
            "score": round(h.score, 6),
            "chunk_id": h.chunk_id,
            "snippet": snippet(chunk_text or ""),
            "summary": gold_summary or predicted_summary,
            "tags": tags.get(h.doc_id, []),
            "ranks": h.ranks,
        })
    return out


def document_tags(session: Session, doc_ids: Sequence[int]) -> dict[int, list[str]]:
    """Gold tags where a person gave them (front matter plus accepted reviews, alphabetical; the rule of
    store.queries.gold_tags_by_document), else the model's applied tags no reviewer rejected, best first."""
    gold: dict[int, set[str]] = {}
    rejected: set[tuple[int, str]] = set()
    predicted: dict[int, list[tuple[float, str]]] = {}
    for doc_id, origin, tag, score in session.connection().execute(_TAG_ROWS, {"doc_ids": list(doc_ids)}):
        if origin in ("front", "accept"):
            gold.setdefault(doc_id, set()).add(tag)
        elif origin == "reject":
            rejected.add((doc_id, tag))
        elif origin == "predicted":
            predicted.setdefault(doc_id, []).append((-score, tag))
    out = {doc_id: sorted(tags) for doc_id, tags in gold.items()}
    for doc_id, scored in predicted.items():
        if doc_id not in out:
            tags = [tag for _, tag in sorted(scored) if (doc_id, tag) not in rejected]
            if tags:
                out[doc_id] = tags
    return out


def snippet(text: str, limit: int = 280) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rsplit(" ", 1)[0] + "…"
