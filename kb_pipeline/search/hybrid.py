"""Hybrid search: keyword (the database's full-text engine) + dense (FAISS), fused by reciprocal rank.

Filters and access control come first: the SQL that finds keyword hits and the set of chunk ids
handed to FAISS (as an IDSelector) both contain only chunks the user may read and that match the
tag/category filters, so k results come back whenever k allowed documents exist and nothing
forbidden can be ranked at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Float, Integer, and_, func, or_, select, text
from sqlalchemy.orm import Session

from kb_pipeline.store import users
from kb_pipeline.store.queries import gold_category_condition, gold_tags_by_document
from kb_pipeline.store.schema import Chunk, Document, GoldLabel, GoldTag, PredictedLabel, PredictedSummary, ReviewLabel

RRF_K = 60  # the constant from Cormack et al.; damps the difference between top ranks
MODES = ("hybrid", "dense", "keyword")
# Keyword search ORs the query's distinct words, the first MAX_QUERY_TERMS of them: a bound on the SQL,
# since a 30,000-word tsquery exceeds Postgres's stack depth and takes SQLite seconds. A pasted paragraph
# still fits; dense search reads the query's first tokens up to the model's limit anyway.
MAX_QUERY_TERMS = 64
_WORD = re.compile(r"\w+", re.UNICODE)


from kb_pipeline.errors import SearchError  # noqa: E402,F401  (the one error type)


@dataclass(frozen=True)
class Filters:
    tags: tuple[str, ...] = ()
    category: str | None = None
    groups: tuple[str, ...] | None = None  # None: anonymous, sees only documents without an ACL


@dataclass
class Hit:
    doc_id: int
    chunk_id: int
    score: float
    ranks: dict = field(default_factory=dict)


def allowed_condition(filters: Filters):
    """SQL condition on Document for everything a search may return."""
    conditions = [Document.status == "active", users.readable_filter(filters.groups)]
    if filters.category:
        category = filters.category.lower()
        predicted = select(PredictedLabel.document_id).where(
            PredictedLabel.document_id == Document.id,
            PredictedLabel.kind == "category",
            PredictedLabel.label == category,
            PredictedLabel.status == "applied",  # an abstained guess is not the document's category
        )
        conditions.append(or_(gold_category_condition(Document.id, category), predicted.exists()))
    for tag in filters.tags:
        tag = tag.lower()
        gold = select(GoldTag.document_id).where(GoldTag.document_id == Document.id, GoldTag.tag == tag)
        reviewed = select(ReviewLabel.document_id).where(
            ReviewLabel.document_id == Document.id, ReviewLabel.kind == "tag", ReviewLabel.label == tag
        )
        accepted = reviewed.where(ReviewLabel.verdict == "accept")
        rejected = reviewed.where(ReviewLabel.verdict == "reject")
        predicted = select(PredictedLabel.document_id).where(
            PredictedLabel.document_id == Document.id, PredictedLabel.kind == "tag", PredictedLabel.label == tag,
            PredictedLabel.status == "applied",
        )
        conditions.append(or_(gold.exists(), accepted.exists(), and_(predicted.exists(), ~rejected.exists())))
    return and_(*conditions)


def allowed_chunk_ids(session: Session, filters: Filters) -> np.ndarray:
    query = select(Chunk.id).join(Document, Document.id == Chunk.document_id).where(allowed_condition(filters))
    return np.fromiter(session.scalars(query.order_by(Chunk.id)), dtype=np.int64)


def query_terms(query: str) -> list[str]:
    """The query's distinct lower-cased words in order of first appearance, at most MAX_QUERY_TERMS."""
    terms: dict[str, None] = {}
    for match in _WORD.finditer(query):
        terms.setdefault(match.group().lower())
        if len(terms) == MAX_QUERY_TERMS:
            break
    return list(terms)


def keyword_hits(session: Session, query: str, filters: Filters, limit: int) -> list[tuple[int, int, float]]:
    """(chunk id, doc id, score) best first, from SQLite FTS5 (bm25) or Postgres full text (ts_rank_cd)."""
    words = query_terms(query)
    if not words:
        return []
    if session.get_bind().dialect.name == "sqlite":
        match = " OR ".join(f'"{w}"' for w in words)
        fts = text("SELECT rowid AS chunk_id, bm25(chunks_fts) AS rank FROM chunks_fts WHERE chunks_fts MATCH :m")
        fts = fts.columns(chunk_id=Integer, rank=Float).subquery()
        score = -fts.c.rank  # bm25(): lower is better
        rows = session.execute(
            select(Chunk.id, Chunk.document_id, score)
            .join(fts, fts.c.chunk_id == Chunk.id)
            .join(Document, Document.id == Chunk.document_id)
            .where(allowed_condition(filters))
            .order_by(score.desc(), Document.path, Chunk.ordinal)  # ties: stable across ingest histories
            .limit(limit),
            {"m": match},
        )
    else:
        tsquery = func.to_tsquery("english", " | ".join(f"'{w}'" for w in words))
        vector = func.to_tsvector("english", Chunk.text)
        score = func.ts_rank_cd(vector, tsquery)
        rows = session.execute(
            select(Chunk.id, Chunk.document_id, score)
            .join(Document, Document.id == Chunk.document_id)
            .where(vector.op("@@")(tsquery), allowed_condition(filters))
            .order_by(score.desc(), Document.path, Chunk.ordinal)  # ties: stable across ingest histories
            .limit(limit)
        )
    return [(int(c), int(d), float(s)) for c, d, s in rows]


def dense_hits(
    session: Session, index, query_vector: np.ndarray, allowed: np.ndarray, limit: int
) -> list[tuple[int, int, float]]:
    if not len(allowed):
        return []
    scores, ids = index.search(query_vector.reshape(1, -1).astype(np.float32), min(limit, len(allowed)), allowed)
    found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
    owners = dict(session.execute(select(Chunk.id, Chunk.document_id).where(Chunk.id.in_([i for i, _ in found]))).all())
    return [(cid, owners[cid], score) for cid, score in found if cid in owners]


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
    index=None, embed=None,
) -> list[dict]:
    """Top-k documents for `query`; `embed(texts) -> (N, dim)` and `index` are needed for dense modes."""
    if mode not in MODES:
        raise SearchError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if k < 1:
        raise SearchError("k must be at least 1")
    depth = max(50, 5 * k)
    lists: dict[str, list] = {}
    if mode in ("hybrid", "keyword"):
        lists["keyword"] = keyword_hits(session, query, filters, depth)
    if mode in ("hybrid", "dense"):
        allowed = allowed_chunk_ids(session, filters)
        vector = embed([query])[0]
        while True:  # widen until k distinct documents or every allowed chunk was ranked
            ranked = dense_hits(session, index, vector, allowed, depth)
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

    def search(self, session: Session, query: str, *, k: int = 10, mode: str = "hybrid",
               filters: Filters = Filters()) -> list[dict]:
        return search(session, query, k=k, mode=mode, filters=filters, index=self.index, embed=self.embed)


def open_searcher(settings, models=None) -> Searcher:
    """The task models' embedder (loaded unless given) and the live index of its vectors."""
    from kb_pipeline.enrich.shared_pass import load_task_models
    from kb_pipeline.indexing.sync import load_live_index

    models = models or load_task_models(settings)
    return Searcher(models.embed, load_live_index(settings, models.embed_key))


def describe(session: Session, hits: Sequence[Hit]) -> list[dict]:
    """Result rows: doc id, absolute path, title, score, matching chunk snippet, summary and tags."""
    if not hits:
        return []
    doc_ids = [h.doc_id for h in hits]
    docs = {d.id: d for d in session.scalars(select(Document).where(Document.id.in_(doc_ids)))}
    chunks = dict(session.execute(select(Chunk.id, Chunk.text).where(Chunk.id.in_([h.chunk_id for h in hits]))).all())
    gold = {g.document_id: g for g in session.scalars(select(GoldLabel).where(GoldLabel.document_id.in_(doc_ids)))}
    predicted_summary = dict(session.execute(
        select(PredictedSummary.document_id, PredictedSummary.summary).where(PredictedSummary.document_id.in_(doc_ids))
    ).all())
    tags = document_tags(session, doc_ids)
    return [
        {
            "doc_id": h.doc_id,
            "path": docs[h.doc_id].path,
            "title": docs[h.doc_id].title,
            "score": round(h.score, 6),
            "chunk_id": h.chunk_id,
            "snippet": snippet(chunks.get(h.chunk_id, "")),
            "summary": (gold[h.doc_id].summary if h.doc_id in gold and gold[h.doc_id].summary else None)
            or predicted_summary.get(h.doc_id),
            "tags": tags.get(h.doc_id, []),
            "ranks": h.ranks,
        }
        for h in hits
    ]


def document_tags(session: Session, doc_ids: Sequence[int]) -> dict[int, list[str]]:
    """Gold tags where a person gave them, else the model's applied tags that no reviewer rejected."""
    out = gold_tags_by_document(session, doc_ids)
    predicted = select(PredictedLabel.document_id, PredictedLabel.label).where(
        PredictedLabel.document_id.in_(doc_ids), PredictedLabel.kind == "tag", PredictedLabel.status == "applied"
    ).order_by(PredictedLabel.score.desc())
    rejected = {tuple(row) for row in session.execute(select(ReviewLabel.document_id, ReviewLabel.label).where(
        ReviewLabel.document_id.in_(doc_ids), ReviewLabel.kind == "tag", ReviewLabel.verdict == "reject"
    ))}
    gold_tagged = set(out)
    for doc_id, tag in session.execute(predicted):
        if doc_id not in gold_tagged and (doc_id, tag) not in rejected:
            out.setdefault(doc_id, []).append(tag)
    return out


def snippet(text: str, limit: int = 280) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rsplit(" ", 1)[0] + "…"
