"""Keyword retrieval, best first among the chunks a search may return: SQLite FTS5 (bm25) or Postgres full text.

Where the time goes on SQLite: FTS5 computes bm25 for every row matching any query word, and a word such as
"the" matches nearly every chunk (100k chunks: ~33k rows for a news headline, 95 ms p50 / 470 ms p95 here).
bm25's IDF is log((N - n + 0.5) / (n + 0.5)), clamped to 1e-6 once a word is in more than half of the N rows,
so such a word adds at most ~1e-6 to a row's score: it costs the scan and orders nothing. Those words are left
out of the MATCH (`TermCounts` caches each word's row count per search generation), and the query with every
word runs only when the rest find fewer than `limit` rows, so rows matching nothing but common words still
come last. On 100 BBC headlines over 100k chunks the top 50 came out identical (benchmarks/query_path.py).

With an allowed set at hand (a Searcher's cached one, search/allowed.py), the FTS5 query runs on its own, best
first under a LIMIT sized by the set's share of the KB, and keeps the rows the set holds, widening the LIMIT
until `limit` allowed rows (with the whole tie at the cut) or every match was seen: no per-row join with the
filter SQL. Without one, the filters join the SQL. Postgres drops stop words itself ("english" config),
ranks each row from its stored tsvector (migration 0008: re-parsing the text of every matching row cost 16x at
100k chunks) and always joins the filters.
"""

from __future__ import annotations

import re
import threading

import numpy as np
from sqlalchemy import Float, Integer, bindparam, func, literal_column, select, text
from sqlalchemy.orm import Session

from kb_pipeline.search.allowed import Allowed, generation
from kb_pipeline.search.filters import Filters, allowed_condition
from kb_pipeline.store.schema import Chunk, Document

# Keyword search ORs the query's distinct words, the first MAX_QUERY_TERMS of them: a bound on the SQL,
# since a 30,000-word tsquery exceeds Postgres's stack depth and takes SQLite seconds. A pasted paragraph
# still fits; dense search reads the query's first tokens up to the model's limit anyway.
MAX_QUERY_TERMS = 64
COMMON_SHARE = 0.5  # bm25's IDF is clamped to 1e-6 for words in more than this share of the rows
MAX_COUNTED_WORDS = 100_000  # TermCounts starts over past this many words (each entry is a few dozen bytes)
_WORD = re.compile(r"\w+", re.UNICODE)
_FTS_RANKED = text(
    "SELECT rowid, bm25(chunks_fts) AS rank FROM chunks_fts WHERE chunks_fts MATCH :m ORDER BY rank LIMIT :n"
)
_FTS_COUNT = text("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH :m")
_CHUNK_COUNT = select(func.count()).select_from(Chunk)
_PLACES = (  # where tied rows sit: their document's path and their order in it
    select(Chunk.id, Document.path, Chunk.ordinal)
    .join(Document, Document.id == Chunk.document_id)
    .where(Chunk.id.in_(bindparam("ids", expanding=True)))
)


def query_terms(query: str) -> list[str]:
    """The query's distinct lower-cased words in order of first appearance, at most MAX_QUERY_TERMS."""
    terms: dict[str, None] = {}
    for match in _WORD.finditer(query):
        terms.setdefault(match.group().lower())
        if len(terms) == MAX_QUERY_TERMS:
            break
    return list(terms)


def _match(words: list[str]) -> str:
    return " OR ".join(f'"{w}"' for w in words)


class TermCounts:
    """How many chunks each query word matches in FTS5, and how many chunks there are, per search generation.

    A Searcher keeps one, so a word costs one count the first time it is searched after a change to the KB.
    Inside a transaction with uncommitted writes (generation None) nothing is cached. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._counts: dict[str, int] = {}
        self._total: int | None = None

    def _snapshot(self, current: int | None) -> tuple[dict[str, int], int | None]:
        with self._lock:
            if current is None:
                return {}, None
            if current != self._generation or len(self._counts) > MAX_COUNTED_WORDS:
                self._generation, self._counts, self._total = current, {}, None
            return dict(self._counts), self._total

    def lookup(self, session: Session, words: list[str]) -> tuple[dict[str, int], int]:
        """(row count per word, number of chunks), counted now where not cached for this generation."""
        current = generation(session)  # read first: counts taken after it are at least this new
        counts, total = self._snapshot(current)
        connection = session.connection()  # Core: the ORM layer would cost more than these lookups
        fresh = {w: int(connection.execute(_FTS_COUNT, {"m": _match([w])}).scalar()) for w in words if w not in counts}
        if total is None:
            total = int(connection.execute(_CHUNK_COUNT).scalar())
        if current is not None:
            with self._lock:
                if current == self._generation:
                    self._counts.update(fresh)
                    self._total = total
        return {**counts, **fresh}, total

    def common(self, session: Session, words: list[str]) -> tuple[set[str], int]:
        """(the words in more than COMMON_SHARE of the chunks, number of chunks)."""
        counts, total = self.lookup(session, words)
        return {w for w in words if counts[w] > COMMON_SHARE * total}, total


def keyword_hits(
    session: Session, query: str, filters: Filters, limit: int, *,
    allowed: Allowed | None = None, counts: TermCounts | None = None,
) -> list[tuple[int, int, float]]:
    """(chunk id, doc id, score) best first, at most `limit`; ties by document path, then chunk order.

    `allowed`, when given, must be the set `filters` allow (a Searcher's cached one); `counts` caches word
    counts between queries (a fresh one counts every word now).
    """
    words = query_terms(query)
    if not words:
        return []
    if session.get_bind().dialect.name != "sqlite":
        return _postgres_hits(session, words, filters, limit)
    common, total = (counts or TermCounts()).common(session, words)
    informative = [w for w in words if w not in common]
    hits = _sqlite_hits(session, informative, filters, limit, allowed, total) if informative else []
    if len(hits) < limit and common:  # rows matching only common words come last, as a full query ranks them
        hits = _sqlite_hits(session, words, filters, limit, allowed, total)
    return hits


def _sqlite_hits(session, words, filters, limit, allowed, total) -> list[tuple[int, int, float]]:
    if allowed is None:
        return _sqlite_joined(session, words, filters, limit)
    if not len(allowed):
        return []
    fetch = max(2 * limit, int(2 * limit * total / len(allowed)))  # expect limit allowed rows in the first fetch
    while True:
        rows = session.connection().execute(_FTS_RANKED, {"m": _match(words), "n": fetch}).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        scores = -np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))  # bm25(): lower is better
        member = allowed.contains(ids)
        kept, kept_scores = ids[member], scores[member]
        exhausted = len(rows) < fetch
        # done once `limit` allowed rows are in and no unseen row can tie the last of them
        if exhausted or (len(kept) >= limit and scores[-1] < kept_scores[limit - 1]):
            break
        fetch *= 4
    if len(kept) > limit:
        cut = kept_scores >= kept_scores[limit - 1]  # the whole tie at the cut; path order decides below
        kept, kept_scores = kept[cut], kept_scores[cut]
    owners = allowed.owners(kept)
    hits = [(int(c), int(d), float(s)) for c, d, s in zip(kept, owners, kept_scores)]
    if len(set(kept_scores.tolist())) < len(kept_scores):  # ties: the same order the SQL path gives
        place = {c: (path, ordinal) for c, path, ordinal in session.connection().execute(_PLACES, {"ids": kept.tolist()})}
        hits.sort(key=lambda h: (-h[2], *place.get(h[0], ("", 0))))
    return hits[:limit]


def _sqlite_joined(session, words, filters, limit) -> list[tuple[int, int, float]]:
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
        {"m": _match(words)},
    )
    return [(int(c), int(d), float(s)) for c, d, s in rows]


_TSV = literal_column("chunks.text_tsv")  # to_tsvector('english', text), stored (migration 0008); not in the ORM


def _postgres_hits(session, words, filters, limit) -> list[tuple[int, int, float]]:
    tsquery = func.to_tsquery("english", " | ".join(f"'{w}'" for w in words))
    score = func.ts_rank_cd(_TSV, tsquery)
    rows = session.execute(
        select(Chunk.id, Chunk.document_id, score)
        .join(Document, Document.id == Chunk.document_id)
        .where(_TSV.op("@@")(tsquery), allowed_condition(filters))
        .order_by(score.desc(), Document.path, Chunk.ordinal)  # ties: stable across ingest histories
        .limit(limit)
    )
    return [(int(c), int(d), float(s)) for c, d, s in rows]
