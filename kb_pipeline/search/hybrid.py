"""Hybrid search: keyword (the database's full-text engine) + dense (FAISS), fused by reciprocal rank.

Filters and access control come first: the SQL that finds keyword hits and the set of chunk ids
handed to FAISS (as an IDSelector) both contain only chunks the user may read and that match the
tag/category filters, so k results come back whenever k allowed documents exist and nothing
forbidden can be ranked at all. The allowed set is cached per (groups, filters) while the KB's
search generation is unchanged (search/allowed.py), so a query does not list every readable chunk.
A hybrid query encodes its text on a worker thread while the keyword SQL runs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Float, Integer, and_, func, or_, select, text
from sqlalchemy.orm import Session

from kb_pipeline.search.allowed import Allowed, AllowedSets
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


def allowed_set(session: Session, filters: Filters) -> Allowed:
    """Every chunk `filters` allow, with its document (one SQL query, linear in the KB: cached by Searcher)."""
    query = select(Chunk.id, Chunk.document_id).join(Document, Document.id == Chunk.document_id)
    rows = session.execute(query.where(allowed_condition(filters)).order_by(Chunk.id)).all()
    # fromiter over the flattened rows: np.array(rows) walks each Row object (100k rows: 2 s against 11 ms)
    pairs = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=2 * len(rows)).reshape(-1, 2)
    return Allowed.of(pairs[:, 0], pairs[:, 1])


def allowed_chunk_ids(session: Session, filters: Filters) -> np.ndarray:
    return allowed_set(session, filters).chunk_ids


def filter_key(filters: Filters) -> tuple:
    """What the allowed set depends on, normalised: group order and letter case do not matter."""
    groups = None if filters.groups is None else tuple(sorted(set(filters.groups)))
    return (groups, tuple(sorted({t.lower() for t in filters.tags})), (filters.category or "").lower() or None)


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
) -> list[dict]:
    """Top-k documents for `query`; `embed(texts) -> (N, dim)` and `index` are needed for dense modes.

    `allowed_sets` (a Searcher's) caches the allowed chunk set between queries; without it each dense query
    lists the set with SQL. With `parallel`, the query is encoded on a worker thread while the session looks up
    the set and runs the keyword SQL (sessions never leave the calling thread); that pays when a core is idle,
    and costs GIL hand-offs when every core is busy (benchmarks/query_path.py measures both).
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
        if encoded is not None:
            if allowed_sets is not None:
                allowed = allowed_sets.get(session, filters, filter_key(filters))
            else:
                allowed = allowed_set(session, filters)
        if mode in ("hybrid", "keyword"):
            lists["keyword"] = keyword_hits(session, query, filters, depth)
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

    def search(self, session: Session, query: str, *, k: int = 10, mode: str = "hybrid",
               filters: Filters = Filters()) -> list[dict]:
        return search(session, query, k=k, mode=mode, filters=filters, index=self.index, embed=self.embed,
                      allowed_sets=self.allowed, parallel=self.parallel)


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


def describe(session: Session, hits: Sequence[Hit]) -> list[dict]:
    """Result rows: doc id, absolute path, title, score, matching chunk snippet, summary and tags."""
    if not hits:
        return []
    doc_ids = [h.doc_id for h in hits]
    rows = session.execute(  # one query for every row's document, chunk and summaries
        select(Chunk.id, Document.id, Document.path, Document.title, Chunk.text, GoldLabel.summary,
               PredictedSummary.summary)
        .join(Document, Document.id == Chunk.document_id)
        .outerjoin(GoldLabel, GoldLabel.document_id == Document.id)
        .outerjoin(PredictedSummary, PredictedSummary.document_id == Document.id)
        .where(Chunk.id.in_([h.chunk_id for h in hits]))
    ).all()
    found = {(chunk_id, doc_id): rest for chunk_id, doc_id, *rest in rows}
    tags = document_tags(session, doc_ids)
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
