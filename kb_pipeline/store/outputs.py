"""Enrichment outputs: which documents and chunks need labels, summaries or vectors, and saving them.

Staleness is a query, not a flag: an output is stale when the adapter version or the document
version it records differs from the current one, so a new adapter or a changed document marks
exactly the affected rows without any bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from sqlalchemy import and_, delete, select
from sqlalchemy.orm import Session

from kb_pipeline.store.schema import Chunk, ChunkEmbedding, Document, PredictedLabel, PredictedSummary, utcnow


def docs_needing_labels(
    session: Session, adapter_version: int, document_ids: Sequence[int] | None = None
) -> list[tuple[int, int, str, str]]:
    """(id, version, title, text) of active documents without a current category prediction."""
    current = and_(
        PredictedLabel.document_id == Document.id,
        PredictedLabel.kind == "category",
        PredictedLabel.adapter_version == adapter_version,
        PredictedLabel.document_version == Document.version,
    )
    query = (
        select(Document.id, Document.version, Document.title, Document.text)
        .where(Document.status == "active", ~select(PredictedLabel.label).where(current).exists())
        .order_by(Document.id)
    )
    return [tuple(row) for row in session.execute(_only(query, Document.id, document_ids))]


def docs_needing_summary(
    session: Session, adapter_version: int, document_ids: Sequence[int] | None = None
) -> list[tuple[int, int, str, str]]:
    current = and_(
        PredictedSummary.document_id == Document.id,
        PredictedSummary.adapter_version == adapter_version,
        PredictedSummary.document_version == Document.version,
    )
    query = (
        select(Document.id, Document.version, Document.title, Document.text)
        .where(Document.status == "active", ~select(PredictedSummary.document_id).where(current).exists())
        .order_by(Document.id)
    )
    return [tuple(row) for row in session.execute(_only(query, Document.id, document_ids))]


def chunks_needing_embedding(
    session: Session, embed_key: str, document_ids: Sequence[int] | None = None
) -> list[tuple[int, int, str]]:
    """(chunk id, document version, text) of active chunks with no vector under embed_key."""
    has = and_(ChunkEmbedding.chunk_id == Chunk.id, ChunkEmbedding.embed_key == embed_key)
    query = (
        select(Chunk.id, Document.version, Chunk.text)
        .join(Document, Document.id == Chunk.document_id)
        .where(Document.status == "active", ~select(ChunkEmbedding.chunk_id).where(has).exists())
        .order_by(Chunk.id)
    )
    return [tuple(row) for row in session.execute(_only(query, Chunk.document_id, document_ids))]


def docs_needing_embedding(session: Session, embed_key: str) -> list[int]:
    """Ids of active documents with at least one chunk that has no vector under embed_key."""
    has = and_(ChunkEmbedding.chunk_id == Chunk.id, ChunkEmbedding.embed_key == embed_key)
    query = (
        select(Chunk.document_id)
        .join(Document, Document.id == Chunk.document_id)
        .where(Document.status == "active", ~select(ChunkEmbedding.chunk_id).where(has).exists())
        .distinct()
    )
    return sorted(session.scalars(query))


def _only(query, column, ids: Sequence[int] | None):
    """Restrict a staleness query to some documents (one enrichment batch), or leave it whole."""
    return query if ids is None else query.where(column.in_(list(ids)))


def save_labels(session: Session, rows: Sequence[dict], adapter_version: int) -> None:
    """rows: {document_id, document_version, category, category_score, tags: [(tag, score[, margin])]} and optionally
    category_margin, abstained (the category is a guess below the confidence threshold: the document needs review)
    and near: [(tag, score, margin)] (tags just under their threshold, not applied)."""
    doc_ids = [r["document_id"] for r in rows]
    session.execute(delete(PredictedLabel).where(PredictedLabel.document_id.in_(doc_ids)))
    values = []
    for r in rows:
        common = dict(document_id=r["document_id"], adapter_version=adapter_version,
                      document_version=r["document_version"], created_at=utcnow())
        values.append(dict(
            common, kind="category", label=r["category"], score=float(r["category_score"]),
            status="abstained" if r.get("abstained") else "applied", margin=_float(r.get("category_margin")),
        ))
        for status, tags in (("applied", r["tags"]), ("near", r.get("near", ()))):
            values.extend(
                dict(common, kind="tag", label=tag, score=float(score), status=status, margin=_float(rest[0] if rest else None))
                for tag, score, *rest in tags
            )
    if values:
        _upsert(session, PredictedLabel, values, ["document_id", "kind", "label"])


def _float(value) -> float | None:
    return None if value is None else float(value)


def save_summaries(session: Session, rows: Sequence[dict], adapter_version: int) -> None:
    """rows: {document_id, document_version, summary}."""
    session.execute(delete(PredictedSummary).where(PredictedSummary.document_id.in_([r["document_id"] for r in rows])))
    _upsert(session, PredictedSummary, [dict(r, adapter_version=adapter_version, created_at=utcnow()) for r in rows],
            ["document_id"])


def save_embeddings(session: Session, embed_key: str, rows: Sequence[tuple[int, int]], vectors: np.ndarray) -> int:
    """rows: (chunk id, document version), aligned with vectors (N, dim) float32; returns rows written.

    Chunks replaced by a concurrent ingest since they were read are skipped, not an error.
    """
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    alive = set(session.scalars(select(Chunk.id).where(Chunk.id.in_([cid for cid, _ in rows]))))
    values = [
        dict(chunk_id=cid, embed_key=embed_key, document_version=ver, dim=vectors.shape[1],
             vector=vectors[i].tobytes(), created_at=utcnow())
        for i, (cid, ver) in enumerate(rows)
        if cid in alive
    ]
    if values:
        _upsert(session, ChunkEmbedding, values, ["chunk_id", "embed_key"])
    return len(values)


def _upsert(session: Session, model, values: list[dict], keys: list[str]) -> None:
    """Insert rows; a row another enricher stored meanwhile (same key) is overwritten, not an error.

    Two `kb enrich` at once compute the same outputs for the same document and adapter versions, so
    the last writer winning is correct; a plain INSERT would make the slower one fail.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = dialect_insert(model)
    columns = [c for c in values[0] if c not in keys]
    session.execute(
        statement.on_conflict_do_update(index_elements=keys, set_={c: statement.excluded[c] for c in columns}), values
    )


def load_embeddings(session: Session, embed_key: str, chunk_ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (N,), vectors float32 (N, dim)) of active chunks stored under embed_key."""
    query = (
        select(ChunkEmbedding.chunk_id, ChunkEmbedding.vector)
        .join(Chunk, Chunk.id == ChunkEmbedding.chunk_id)
        .join(Document, Document.id == Chunk.document_id)
        .where(ChunkEmbedding.embed_key == embed_key, Document.status == "active")
        .order_by(ChunkEmbedding.chunk_id)
    )
    if chunk_ids is not None:
        query = query.where(ChunkEmbedding.chunk_id.in_(list(chunk_ids)))
    rows = session.execute(query).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    blob = b"".join(r[1] for r in rows)  # one buffer, one array: no per-row numpy objects
    if len(blob) % (4 * len(rows)):
        raise ValueError(f"stored vectors under {embed_key!r} differ in width")
    vectors = np.frombuffer(blob, dtype="<f4").reshape(len(rows), -1).astype(np.float32)
    return ids, vectors


def active_chunk_ids(session: Session) -> np.ndarray:
    query = select(Chunk.id).join(Document).where(Document.status == "active").order_by(Chunk.id)
    return np.fromiter(session.scalars(query), dtype=np.int64)
