"""Queries several layers need, written once: gold tags by document and the adapter versions in use.

Search, export, training data, freshness and `kb eval` all read gold tags; enrichment, search and the
registry all ask which adapter version is active. They call these instead of writing the query again.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from kb_pipeline.store.schema import AdapterVersion, GoldTag


def gold_tags_by_document(session: Session, document_ids: Sequence[int] | None = None) -> dict[int, list[str]]:
    """document id -> its gold tags in alphabetical order (only documents with a tag); all documents or these."""
    query = select(GoldTag.document_id, GoldTag.tag).order_by(GoldTag.tag)
    if document_ids is not None:
        query = query.where(GoldTag.document_id.in_(list(document_ids)))
    tags: dict[int, list[str]] = {}
    for doc_id, tag in session.execute(query):
        tags.setdefault(doc_id, []).append(tag)
    return tags


def active_version(session: Session, task: str, backbone_hash: str) -> AdapterVersion | None:
    """The version of `task` serving on this backbone, if any."""
    return session.scalars(
        select(AdapterVersion).where(
            AdapterVersion.task == task,
            AdapterVersion.backbone_hash == backbone_hash,
            AdapterVersion.status == "active",
        )
    ).first()


def active_versions(session: Session, backbone_hash: str) -> dict[str, AdapterVersion]:
    """task -> its active version on this backbone."""
    rows = session.scalars(
        select(AdapterVersion).where(AdapterVersion.backbone_hash == backbone_hash, AdapterVersion.status == "active")
    )
    return {row.task: row for row in rows}


def list_versions(session: Session, task: str | None = None) -> list[AdapterVersion]:
    """Every version (of one task), grouped by task, newest first."""
    query = select(AdapterVersion).order_by(AdapterVersion.task, AdapterVersion.id.desc())
    if task:
        query = query.where(AdapterVersion.task == task)
    return list(session.scalars(query))


def latest_version(session: Session, task: str, backbone_hash: str) -> AdapterVersion | None:
    """The newest version of `task` on this backbone, whatever its status."""
    return session.scalars(
        select(AdapterVersion)
        .where(AdapterVersion.task == task, AdapterVersion.backbone_hash == backbone_hash)
        .order_by(AdapterVersion.id.desc())
    ).first()


def version_paths(session: Session) -> list[str]:
    """The adapter folder of every registered version, whatever its status (rollback may need any of them)."""
    return list(session.scalars(select(AdapterVersion.path)))
