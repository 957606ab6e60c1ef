"""Queries several layers need, written once: gold tags by document and the adapter versions in use.

Search, export, training data, freshness and `kb eval` all read gold tags; enrichment, search and the
registry all ask which adapter version is active. They call these instead of writing the query again.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from kb_pipeline.store.schema import AdapterVersion, GoldLabel, GoldTag, ReviewLabel


def gold_tags_by_document(session: Session, document_ids: Sequence[int] | None = None) -> dict[int, list[str]]:
    """document id -> its gold tags in alphabetical order (only documents with a tag); all documents or these.

    Gold is the file's front-matter tags plus the tags a reviewer accepted, minus those a reviewer
    rejected; a front-matter tag is never removed by a review (the file wins).
    """
    return {d: sorted(tags) for d, tags in gold_tag_origins(session, document_ids).items() if tags}


def gold_tag_origins(session: Session, document_ids: Sequence[int] | None = None) -> dict[int, dict[str, str]]:
    """document id -> {gold tag: "front_matter" | "review"}."""
    ids = list(document_ids) if document_ids is not None else None
    front = select(GoldTag.document_id, GoldTag.tag)
    reviewed = select(ReviewLabel.document_id, ReviewLabel.label, ReviewLabel.verdict).where(ReviewLabel.kind == "tag")
    if ids is not None:
        front, reviewed = front.where(GoldTag.document_id.in_(ids)), reviewed.where(ReviewLabel.document_id.in_(ids))
    out: dict[int, dict[str, str]] = {}
    for doc_id, tag, verdict in session.execute(reviewed):
        if verdict == "accept":
            out.setdefault(doc_id, {})[tag] = "review"
        else:
            out.setdefault(doc_id, {})
    for doc_id, tag in session.execute(front):
        out.setdefault(doc_id, {})[tag] = "front_matter"
    return out


def gold_categories(session: Session, document_ids: Sequence[int] | None = None) -> dict[int, tuple[str, str]]:
    """document id -> (gold category, "front_matter" | "review"): the file's category wins over a reviewer's."""
    ids = list(document_ids) if document_ids is not None else None
    reviewed = select(ReviewLabel.document_id, ReviewLabel.label).where(
        ReviewLabel.kind == "category", ReviewLabel.verdict == "accept"
    )
    front = select(GoldLabel.document_id, GoldLabel.category).where(GoldLabel.category.is_not(None))
    if ids is not None:
        front, reviewed = front.where(GoldLabel.document_id.in_(ids)), reviewed.where(ReviewLabel.document_id.in_(ids))
    out = {doc_id: (label, "review") for doc_id, label in session.execute(reviewed)}
    out.update({doc_id: (category, "front_matter") for doc_id, category in session.execute(front)})
    return out


def gold_category_condition(document_id_column, category: str):
    """SQL condition: the document's gold category (front matter, else a review) is `category`."""
    front = select(GoldLabel.document_id).where(GoldLabel.document_id == document_id_column, GoldLabel.category == category)
    has_front = select(GoldLabel.document_id).where(
        GoldLabel.document_id == document_id_column, GoldLabel.category.is_not(None)
    )
    reviewed = select(ReviewLabel.document_id).where(
        ReviewLabel.document_id == document_id_column, ReviewLabel.kind == "category",
        ReviewLabel.verdict == "accept", ReviewLabel.label == category,
    )
    return front.exists() | (~has_front.exists() & reviewed.exists())


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
