"""Data functions for derived outputs: predictions, summaries, embeddings, users and index builds.

Staleness is a query, not a flag: an output is stale when the adapter version or the document
version it records differs from the current one, so a new adapter or a changed document marks
exactly the affected rows without any bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.orm import Session

from kb_pipeline.ingest.identifiers import normalise_identifiers
from kb_pipeline.store.schema import (
    Chunk,
    ChunkEmbedding,
    Document,
    DocumentAcl,
    IndexBuild,
    PredictedLabel,
    PredictedSummary,
    User,
    UserGroup,
    utcnow,
)


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
    """rows: {document_id, document_version, category, category_score, tags: [(tag, score)]}."""
    doc_ids = [r["document_id"] for r in rows]
    session.execute(delete(PredictedLabel).where(PredictedLabel.document_id.in_(doc_ids)))
    values = []
    for r in rows:
        common = dict(document_id=r["document_id"], adapter_version=adapter_version,
                      document_version=r["document_version"], created_at=utcnow())
        values.append(dict(common, kind="category", label=r["category"], score=float(r["category_score"])))
        values.extend(dict(common, kind="tag", label=tag, score=float(score)) for tag, score in r["tags"])
    if values:
        _upsert(session, PredictedLabel, values, ["document_id", "kind", "label"])


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


# --- users and access ----------------------------------------------------------------------------


def add_user(session: Session, name: str, groups: Iterable[str]) -> list[str]:
    """Create or update a user; their groups are replaced by `groups`, normalised as document ACLs are."""
    clean = sorted(normalise_identifiers(groups))
    if session.get(User, name) is None:
        session.add(User(name=name))
        session.flush()
    session.execute(delete(UserGroup).where(UserGroup.user_name == name))
    if clean:
        session.execute(insert(UserGroup), [dict(user_name=name, group_name=g) for g in clean])
    return clean


def user_groups(session: Session, name: str) -> list[str] | None:
    """The user's groups, or None when there is no such user."""
    if session.get(User, name) is None:
        return None
    return list(session.scalars(select(UserGroup.group_name).where(UserGroup.user_name == name).order_by(UserGroup.group_name)))


def list_users(session: Session) -> list[dict]:
    groups: dict[str, list[str]] = {}
    for user, group in session.execute(select(UserGroup.user_name, UserGroup.group_name).order_by(UserGroup.group_name)):
        groups.setdefault(user, []).append(group)
    return [{"name": n, "groups": groups.get(n, [])} for n in session.scalars(select(User.name).order_by(User.name))]


def readable_filter(groups: Sequence[str] | None):
    """SQL condition on Document: no ACL rows, or one of the user's groups (fail closed without a user)."""
    restricted = select(DocumentAcl.document_id).where(DocumentAcl.document_id == Document.id).exists()
    groups = normalise_identifiers(groups or ())  # stored before groups were normalised like ACLs
    if not groups:
        return ~restricted
    allowed = select(DocumentAcl.document_id).where(
        DocumentAcl.document_id == Document.id, DocumentAcl.group_name.in_(list(groups))
    ).exists()
    return ~restricted | allowed


# --- index builds --------------------------------------------------------------------------------


def start_build(session: Session, embed_key: str, kind: str, path_for: Callable[[int], str]) -> int:
    """Record a build in progress; its file is named after its id (``path_for(id)``)."""
    build = IndexBuild(embed_key=embed_key, kind=kind, path="")
    session.add(build)
    session.flush()
    build.path = path_for(build.id)
    session.flush()
    return build.id


def finish_build(session: Session, build_id: int, count: int, checksum: str, path: str) -> None:
    """Mark a build ready and every earlier ready build replaced: readers switch in one commit."""
    session.execute(update(IndexBuild).where(IndexBuild.status == "ready").values(status="replaced"))
    session.execute(
        update(IndexBuild).where(IndexBuild.id == build_id)
        .values(status="ready", count=count, checksum=checksum, path=path, finished_at=utcnow())
    )


def fail_builds(session: Session, build_ids: Sequence[int] | None = None, *, folder: str | None = None) -> int:
    """Mark builds that never finished failed: ``build_ids``, or every 'building' row under ``folder``.

    A writer holding a folder's index lock calls it with ``folder``: any build still 'building'
    there belonged to a writer that died before it could say so.
    """
    query = update(IndexBuild).where(IndexBuild.status == "building")
    if build_ids is not None:
        query = query.where(IndexBuild.id.in_(list(build_ids)))
    if folder is not None:
        query = query.where(IndexBuild.path.startswith(folder.rstrip("/") + "/", autoescape=True))
    return session.execute(query.values(status="failed", finished_at=utcnow())).rowcount


def live_build(session: Session) -> IndexBuild | None:
    return session.scalars(select(IndexBuild).where(IndexBuild.status == "ready").order_by(IndexBuild.id.desc())).first()
