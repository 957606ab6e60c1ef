"""Data functions over a caller-owned Session: the caller decides where transactions begin and end."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import delete, func, insert, literal, select, text, update
from sqlalchemy.orm import Session

from kb_pipeline.store.ingest_runs import run_dict, run_is_gone
from kb_pipeline.store.queries import gold_categories, gold_tags_by_document
from kb_pipeline.store.schema import (
    Chunk,
    Document,
    DocumentAcl,
    GoldLabel,
    GoldTag,
    IngestRun,
    Source,
    utcnow,
)


@dataclass(frozen=True)
class NewDocument:
    """Everything ingestion learnt about one file, ready to be written in one go."""

    uri: str
    path: str
    title: str
    mime: str
    size: int
    mtime: float
    sha256: str
    text: str
    metadata: dict[str, Any]
    category: str | None
    tags: Sequence[str]
    summary: str | None
    acl: Sequence[str]
    chunks: Sequence[dict[str, Any]]  # ordinal, text, char_start, char_end, token_count


class StoredFile(NamedTuple):
    """What the database remembers about a document, enough to skip unchanged files."""

    id: int
    size: int
    mtime: float
    sha256: str
    status: str


# --- sources -------------------------------------------------------------------------------------

SOURCES_LOCK_KEY = 0x6B62_5F73_7263  # "kb_src": the Postgres advisory lock guarding the set of sources


def lock_sources(session: Session, *, exclusive: bool) -> None:
    """Hold the sources lock until this transaction ends; call it first thing in the transaction.

    Exclusive for changing which sources exist (resolve_source), shared for writing documents, so no
    source is created or absorbed between a writer choosing a document's source and committing it.
    Postgres: a transaction-scoped advisory lock. SQLite: BEGIN IMMEDIATE, i.e. the database's one write
    lock, taken before the first read, so what the transaction read cannot change before it writes.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        session.execute(text(f"SELECT {function}(:key)"), {"key": SOURCES_LOCK_KEY})
    elif dialect == "sqlite":
        connection = session.connection()
        if not connection.connection.dbapi_connection.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def resolve_source(session: Session, root: Path, scope: str) -> tuple[Source, str]:
    """The source covering root/scope and the scope relative to it; call it under lock_sources(exclusive).

    The outermost existing source whose root is an ancestor of the ingest path is reused, so ingesting a
    sub-folder never duplicates documents; otherwise root becomes a new source. Either way, any source
    below the chosen one is absorbed into it (adopt_source), so sources never nest and each file has one
    (source, uri) key, whatever order overlapping ingests ran in.
    """
    target = root / scope if scope else root
    sources = session.scalars(select(Source)).all()
    covering = [s for s in sources if _is_within(target, Path(s.root))]
    if covering:
        source = min(covering, key=lambda s: len(s.root))
    else:
        source = Source(root=str(root))
        session.add(source)
        session.flush()
    for other in sources:
        if other.id != source.id and _is_within(Path(other.root), Path(source.root)):
            adopt_source(session, source, other)
    rel = target.relative_to(source.root).as_posix()
    return source, "" if rel == "." else rel


def adopt_source(session: Session, parent: Source, child: Source) -> None:
    """Move a nested source's documents into the source above it (re-keying their uris) and drop it.

    Where both hold a document for the same file (left by overlapping ingests before sources were
    locked), one is kept: the active one, or the parent's when both are active or both deleted.
    """
    prefix = Path(child.root).relative_to(parent.root).as_posix() + "/"
    theirs = session.execute(
        select(Document.id, Document.uri, Document.status).where(Document.source_id == child.id)
    ).all()
    ours = {
        uri: (doc_id, status)
        for uri, doc_id, status in session.execute(
            select(Document.uri, Document.id, Document.status).where(
                Document.source_id == parent.id, Document.uri.startswith(prefix, autoescape=True)
            )
        )
    }
    drop = []
    for doc_id, uri, status in theirs:
        twin = ours.get(prefix + uri)
        if twin is not None:
            drop.append(twin[0] if status == "active" and twin[1] != "active" else doc_id)
    for start in range(0, len(drop), 500):
        session.execute(delete(Document).where(Document.id.in_(drop[start : start + 500])))
    session.execute(
        update(Document)
        .where(Document.source_id == child.id)
        .values(source_id=parent.id, uri=literal(prefix) + Document.uri)
    )
    session.execute(delete(Source).where(Source.id == child.id))
    session.flush()


def outermost_sources(session: Session, paths: Iterable[str]) -> dict[str, tuple[int, str]]:
    """path -> (source id, uri) under the outermost source covering it; paths no source covers are left out."""
    rows = session.execute(select(Source.root, Source.id)).all()
    prefixes = sorted(((root.rstrip("/") + "/", source_id) for root, source_id in rows), key=lambda row: len(row[0]))
    placed = {}
    for path in paths:  # plain string prefixes: roots and paths are absolute, resolved and POSIX
        for prefix, source_id in prefixes:
            if path.startswith(prefix):
                placed[path] = (source_id, path[len(prefix) :])
                break
    return placed


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def known_files(session: Session, source_id: int, scope: str) -> dict[str, StoredFile]:
    """uri -> what is stored, for the documents of a source inside scope."""
    query = select(
        Document.uri, Document.id, Document.size, Document.mtime, Document.content_sha256, Document.status
    ).where(Document.source_id == source_id)
    if scope:
        query = query.where((Document.uri == scope) | Document.uri.startswith(scope + "/", autoescape=True))
    return {row[0]: StoredFile(*row[1:]) for row in session.execute(query)}


def stored_files(session: Session, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], StoredFile]:
    """(source id, uri) -> what is stored, for the given keys that exist."""
    by_source: dict[int, list[str]] = {}
    for source_id, uri in keys:
        by_source.setdefault(source_id, []).append(uri)
    found = {}
    for source_id, uris in by_source.items():
        for start in range(0, len(uris), 500):
            query = select(
                Document.uri, Document.id, Document.size, Document.mtime, Document.content_sha256, Document.status
            ).where(Document.source_id == source_id, Document.uri.in_(uris[start : start + 500]))
            found.update({(source_id, row[0]): StoredFile(*row[1:]) for row in session.execute(query)})
    return found


def stored_file_for(session: Session, source_id: int, uri: str, path: str) -> StoredFile | None:
    """The document stored for a file: under its (source, uri) key, else the active one at its path."""
    query = select(
        Document.id, Document.size, Document.mtime, Document.content_sha256, Document.status, Document.source_id
    ).where(
        ((Document.source_id == source_id) & (Document.uri == uri))
        | ((Document.path == path) & (Document.status == "active"))
    )
    rows = session.execute(query).all()
    rows.sort(key=lambda row: row[5] != source_id)  # the (source, uri) key first
    return StoredFile(*rows[0][:5]) if rows else None


# --- documents -----------------------------------------------------------------------------------


def insert_documents(session: Session, source_id: int, docs: Sequence[NewDocument]) -> list[int]:
    """Insert new documents with their chunks and labels; returns their ids in order.

    One multi-row statement per table instead of an ORM flush and a savepoint per document (about 3 ms
    each). It runs in one savepoint, so when any URI is already taken (another process ingesting the same
    folder) the IntegrityError leaves nothing behind and the caller can fall back to write_document.
    """
    if not docs:
        return []
    now = utcnow()
    rows = [
        {
            "source_id": source_id,
            "uri": doc.uri,
            "version": 1,
            **_document_values(doc, now),
            "metadata": _jsonable(doc.metadata),  # the column behind Document.meta
            "created_at": now,
        }
        for doc in docs
    ]
    with session.begin_nested():
        # Matched back by URI: asking for rows in parameter order makes SQLite insert them one at a time.
        returning = insert(Document.__table__).returning(Document.uri, Document.id)
        inserted = dict(session.execute(returning, rows).all())
        ids = [inserted[doc.uri] for doc in docs]
        pairs = list(zip(ids, docs))
        _insert_rows(session, Chunk, [dict(chunk, document_id=i) for i, doc in pairs for chunk in doc.chunks])
        labels = [(i, doc.category, doc.summary) for i, doc in pairs if doc.category or doc.summary]
        _insert_rows(session, GoldLabel, [{"document_id": i, "category": c, "summary": s} for i, c, s in labels])
        _insert_rows(session, GoldTag, [{"document_id": i, "tag": tag} for i, doc in pairs for tag in doc.tags])
        _insert_rows(session, DocumentAcl, [{"document_id": i, "group_name": g} for i, doc in pairs for g in doc.acl])
    return ids


def _insert_rows(session: Session, model: type, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(model.__table__), rows)


def _document_values(doc: NewDocument, now: datetime) -> dict[str, Any]:
    """Columns every write of a document sets; all but meta, whose column is named differently."""
    return dict(
        path=doc.path,
        title=doc.title[:512],
        mime=doc.mime,
        size=doc.size,
        mtime=doc.mtime,
        content_sha256=doc.sha256,
        status="active",
        text=doc.text,
        updated_at=now,
    )


def write_document(session: Session, source_id: int, doc: NewDocument, existing_id: int | None) -> int:
    """Insert or replace one document with its chunks and labels; returns the document id.

    Runs inside a savepoint so a failure leaves neither a half-written document nor a broken batch.
    """
    with session.begin_nested():
        values = dict(_document_values(doc, utcnow()), meta=_jsonable(doc.metadata))
        if existing_id is None:
            row = Document(source_id=source_id, uri=doc.uri, version=1, **values)
            session.add(row)
            session.flush()
            doc_id = row.id
        else:
            doc_id = existing_id
            session.execute(
                update(Document).where(Document.id == doc_id).values(version=Document.version + 1, **values)
            )
            for table in (Chunk, GoldLabel, GoldTag, DocumentAcl):
                session.execute(delete(table).where(table.document_id == doc_id))
        if doc.chunks:
            session.execute(insert(Chunk), [dict(chunk, document_id=doc_id) for chunk in doc.chunks])
        if doc.category or doc.summary:
            session.add(GoldLabel(document_id=doc_id, category=doc.category, summary=doc.summary))
        session.add_all(GoldTag(document_id=doc_id, tag=tag) for tag in doc.tags)
        session.add_all(DocumentAcl(document_id=doc_id, group_name=group) for group in doc.acl)
        session.flush()
    return doc_id


def touch_document(session: Session, doc_id: int, size: int, mtime: float) -> None:
    """Same content, new mtime (e.g. `touch`): remember it so the fast path works next time."""
    session.execute(update(Document).where(Document.id == doc_id).values(size=size, mtime=mtime))


def mark_deleted(session: Session, doc_ids: Iterable[int]) -> int:
    """Tombstone documents whose files are gone: the row stays (history), derived rows go."""
    ids = list(doc_ids)
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        session.execute(delete(Chunk).where(Chunk.document_id.in_(batch)))
        session.execute(
            update(Document).where(Document.id.in_(batch)).values(status="deleted", updated_at=utcnow())
        )
    return len(ids)


def find_document(session: Session, ref: str) -> Document | None:
    """A document by id, by absolute path or by path relative to its source."""
    if ref.isascii() and ref.isdigit():
        return session.get(Document, int(ref)) if int(ref) < 2**63 else None
    candidates = {ref, str(Path(ref).expanduser().resolve())}
    query = select(Document).where(Document.path.in_(candidates) | (Document.uri == ref))
    return session.scalars(query.order_by(Document.status, Document.id)).first()


def document_summaries(session: Session) -> list[dict[str, Any]]:
    """One row per active document for listings, in three queries whatever the count."""
    chunk_counts = (
        select(Chunk.document_id, func.count().label("n")).group_by(Chunk.document_id).subquery()
    )
    rows = session.execute(
        select(Document, GoldLabel.category, func.coalesce(chunk_counts.c.n, 0))
        .outerjoin(GoldLabel, GoldLabel.document_id == Document.id)
        .outerjoin(chunk_counts, chunk_counts.c.document_id == Document.id)
        .where(Document.status == "active")
        .order_by(Document.path)
    ).all()
    tags = gold_tags_by_document(session)
    acl: dict[int, list[str]] = {}
    for doc_id, group in session.execute(select(DocumentAcl.document_id, DocumentAcl.group_name)):
        acl.setdefault(doc_id, []).append(group)
    return [
        {
            "id": doc.id,
            "path": doc.path,
            "title": doc.title,
            "mime": doc.mime,
            "version": doc.version,
            "size": doc.size,
            "chunks": n_chunks,
            "category": category,
            "tags": tags.get(doc.id, []),
            "acl": sorted(acl.get(doc.id, [])),
        }
        for doc, category, n_chunks in rows
    ]


def document_labels(session: Session, doc_id: int) -> dict[str, Any]:
    """The document's gold labels (front matter, else a reviewer's: store/queries.py) and its ACL."""
    gold = session.get(GoldLabel, doc_id)
    category = gold_categories(session, [doc_id]).get(doc_id)
    tags = gold_tags_by_document(session, [doc_id]).get(doc_id, [])
    acl = session.scalars(
        select(DocumentAcl.group_name).where(DocumentAcl.document_id == doc_id).order_by(DocumentAcl.group_name)
    )
    return {
        "category": category[0] if category else None,
        "tags": list(tags),
        "summary": gold.summary if gold else None,
        "acl": list(acl),
    }


def stats(session: Session) -> dict[str, Any]:
    by_status = dict(session.execute(select(Document.status, func.count()).group_by(Document.status)).all())
    by_mime = dict(
        session.execute(
            select(Document.mime, func.count()).where(Document.status == "active").group_by(Document.mime)
        ).all()
    )
    active_chunks = (
        select(func.count(), func.coalesce(func.sum(Chunk.token_count), 0))
        .select_from(Chunk)
        .join(Document)
        .where(Document.status == "active")
    )
    chunk_count, token_count = session.execute(active_chunks).one()
    labelled = session.scalar(
        select(func.count()).select_from(GoldLabel).join(Document).where(
            Document.status == "active", GoldLabel.category.is_not(None)
        )
    )
    last_run = session.scalars(select(IngestRun).order_by(IngestRun.id.desc())).first()
    if last_run is not None and last_run.status == "running":  # shown as it is; start_run writes it down
        gone = run_is_gone(last_run.pid, last_run.host, last_run.heartbeat_at or last_run.started_at, utcnow())
        last_status = "abandoned" if gone else "running"
    return {
        "documents": by_status.get("active", 0),
        "deleted": by_status.get("deleted", 0),
        "chunks": chunk_count,
        "tokens": int(token_count),
        "labelled_documents": labelled,
        "restricted_documents": session.scalar(
            select(func.count(func.distinct(DocumentAcl.document_id))).join(Document).where(Document.status == "active")
        ),
        "sources": session.scalar(select(func.count()).select_from(Source)),
        "by_mime": by_mime,
        "last_ingest": run_dict(last_run) | ({"status": last_status} if last_run.status == "running" else {})
        if last_run
        else None,
    }


# --- ingest runs and errors ----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Front matter may hold YAML dates and other non-JSON scalars; store them as strings."""
    return json.loads(json.dumps(value, default=str))
