"""The relational schema: the database is the source of truth for every derived artefact.

Tables are created only by Alembic migrations (see migrations/); `alembic check` keeps these
models and the migrations equal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere keeps ids 64-bit, which is
# what FAISS ids are.
IdType = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Source(Base):
    """A folder (or single file) that was ingested; deletions are detected per source."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    root: Mapped[str] = mapped_column(String(1024), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("source_id", "uri"),
        CheckConstraint("status IN ('active', 'deleted')", name="status"),
        {"sqlite_autoincrement": True},  # ids are never reused (FAISS is keyed by them): migration 0004
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(String(1024))  # path relative to the source root
    path: Mapped[str] = mapped_column(String(2048))  # absolute path when last seen
    title: Mapped[str] = mapped_column(String(512))
    mime: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    content_sha256: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document", cascade="all, delete-orphan", order_by="Chunk.ordinal"
    )
    gold: Mapped[GoldLabel | None] = relationship(cascade="all, delete-orphan")
    gold_tags: Mapped[list[GoldTag]] = relationship(cascade="all, delete-orphan")
    acl: Mapped[list[DocumentAcl]] = relationship(cascade="all, delete-orphan")


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("document_id", "ordinal"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(Integer)

    document: Mapped[Document] = relationship(back_populates="chunks")


class GoldLabel(Base):
    """Human labels from front matter; model predictions live in their own tables."""

    __tablename__ = "gold_labels"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    category: Mapped[str | None] = mapped_column(String(128), index=True)
    summary: Mapped[str | None] = mapped_column(Text)


class GoldTag(Base):
    __tablename__ = "gold_tags"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class DocumentAcl(Base):
    """A document with rows here is readable only by members of one of these groups."""

    __tablename__ = "document_acl"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    group_name: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class IngestRun(Base):
    __tablename__ = "ingest_runs"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    paths: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, ok, abandoned
    pid: Mapped[int | None] = mapped_column(Integer)  # of the process that started the run, on host
    host: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # migration 0005
    added: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)


class IngestError(Base):
    __tablename__ = "ingest_errors"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ingest_runs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(2048))
    error_kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Index("ix_documents_sha", Document.content_sha256)
# A file is one active document, whatever sources or concurrent runs saw it (migration 0005).
Index(
    "ux_documents_active_path",
    Document.path,
    unique=True,
    sqlite_where=text("status = 'active'"),
    postgresql_where=text("status = 'active'"),
)


class AdapterVersion(Base):
    """One trained adapter (+ head) for one task on one backbone, with its validation metrics.

    At most one version per (task, backbone hash) is `active`; the promotion gate in
    kb_pipeline.training.registry decides which.
    """

    __tablename__ = "adapter_versions"
    __table_args__ = (CheckConstraint("status IN ('candidate', 'active', 'retired')", name="status"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    task: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    backbone: Mapped[str] = mapped_column(String(512))
    backbone_hash: Mapped[str] = mapped_column(String(64), index=True)
    adapter_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    train_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    adapter_params: Mapped[int] = mapped_column(BigInteger)
    head_params: Mapped[int] = mapped_column(BigInteger)
    backbone_params: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(2048))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    primary_metric: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    baseline: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    history: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    train_documents: Mapped[int] = mapped_column(Integer, default=0)
    val_documents: Mapped[int] = mapped_column(Integer, default=0)
    data_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="candidate", index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --- derived outputs (enrichment), each carrying the adapter and document version it came from ---


class PredictedLabel(Base):
    """A model's category or tag for a document, kept apart from gold labels.

    status (migration 0006): `applied` labels are the document's auto-tags; an `abstained` category scored
    below the calibrated confidence threshold (the document shows no category and needs review; the row
    keeps the model's best guess for the reviewer); a `near` tag scored just under its threshold (not
    applied; the review queue reads it). margin: for a category, top minus second probability; for a tag,
    score minus its threshold.
    """

    __tablename__ = "predicted_labels"
    __table_args__ = (CheckConstraint("kind IN ('category', 'tag')", name="kind"),)

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    label: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    score: Mapped[float] = mapped_column(Float)
    adapter_version: Mapped[int] = mapped_column(Integer)
    document_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="applied", server_default="applied", index=True)
    margin: Mapped[float | None] = mapped_column(Float)


class ReviewLabel(Base):
    """A person's verdict on one label of one document: gold with provenance, apart from front matter and predictions.

    verdict `accept`: the label is gold (a confirmed prediction when predicted_label equals label, a
    replacement when it differs, a new label when nothing was predicted). verdict `reject`: a person said
    the label is wrong (a rejected predicted tag). Front-matter labels win over reviews (store/queries.py).
    The rows belong to the document id, so re-ingesting the file keeps them; content_sha256 records which
    content was reviewed.
    """

    __tablename__ = "review_labels"
    __table_args__ = (
        CheckConstraint("kind IN ('category', 'tag')", name="kind"),
        CheckConstraint("verdict IN ('accept', 'reject')", name="verdict"),
    )

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    label: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(128))
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    predicted_label: Mapped[str | None] = mapped_column(String(128))  # what the model said when the person decided
    predicted_score: Mapped[float | None] = mapped_column(Float)
    adapter_version: Mapped[int | None] = mapped_column(Integer)  # of that prediction
    document_version: Mapped[int] = mapped_column(Integer)
    content_sha256: Mapped[str] = mapped_column(String(64))


class PredictedSummary(Base):
    __tablename__ = "predicted_summaries"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    summary: Mapped[str] = mapped_column(Text)
    adapter_version: Mapped[int] = mapped_column(Integer)
    document_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChunkEmbedding(Base):
    """A chunk's vector under one embedder, so an index can be rebuilt without re-encoding.

    embed_key names the embedder: "adapter:<version>" or "backbone:<weights hash>" (untuned).
    """

    __tablename__ = "chunk_embeddings"

    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True)
    embed_key: Mapped[str] = mapped_column(String(96), primary_key=True, index=True)
    document_version: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, L2-normalised
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IndexBuild(Base):
    """One FAISS index file written under KB_HOME/index/, and what it holds."""

    __tablename__ = "index_builds"
    __table_args__ = (
        CheckConstraint("status IN ('building', 'ready', 'replaced', 'failed')", name="status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    embed_key: Mapped[str] = mapped_column(String(96), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(2048))
    count: Mapped[int] = mapped_column(Integer, default=0)
    checksum: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default="building", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class User(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserGroup(Base):
    __tablename__ = "user_groups"

    user_name: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class ApiToken(Base):
    """An API token of a user: only its SHA-256 is stored; the token itself is shown once when issued."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_name: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SearchGeneration(Base):
    """One row (id 1) whose value changes with every committed write that can change what a search may return.

    Database triggers (migration 0007) change it on any insert, update or delete of documents, chunks, ACLs,
    gold labels and tags, predictions and reviews, so no write path can forget it; searches cache the chunk ids
    a (groups, filters) pair may see and trust the cache only while the value is the one it was computed at.
    """

    __tablename__ = "search_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
