"""What the knowledge base holds now: `kb stats`, the closing report of `kb run` and the flows' artifacts."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kb_pipeline.config import Settings
from kb_pipeline.search.access import OPERATOR, Reader, readable
from kb_pipeline.store import index_builds, repo, users
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.queries import active_versions, gold_categories, gold_tags_by_document
from kb_pipeline.store.schema import Chunk, Document, DocumentAcl, GoldLabel, PredictedLabel, PredictedSummary


def document_stats(session: Session, reader: Reader = OPERATOR) -> dict:
    """Counts over the documents `reader` may read (the operator: all).

    Restricted documents are counted among active ones only: a tombstone keeps its ACL rows (history),
    but it is no longer a document anyone can read.
    """
    visible = readable(reader)
    by_status = dict(session.execute(
        select(Document.status, func.count()).where(visible).group_by(Document.status)
    ).all())
    active = (Document.status == "active") & visible
    by_mime = dict(session.execute(select(Document.mime, func.count()).where(active).group_by(Document.mime)).all())
    chunks, tokens = session.execute(
        select(func.count(), func.coalesce(func.sum(Chunk.token_count), 0))
        .select_from(Chunk).join(Document, Document.id == Chunk.document_id).where(active)
    ).one()
    labelled = session.scalar(
        select(func.count()).select_from(GoldLabel).join(Document, Document.id == GoldLabel.document_id)
        .where(active, GoldLabel.category.is_not(None))
    )
    has_acl = select(DocumentAcl.document_id).where(DocumentAcl.document_id == Document.id).exists()
    restricted = session.scalar(select(func.count()).select_from(Document).where(active, has_acl))
    return {
        "documents": by_status.get("active", 0),
        "deleted": by_status.get("deleted", 0),
        "chunks": int(chunks),
        "tokens": int(tokens),
        "labelled_documents": int(labelled or 0),
        "restricted_documents": int(restricted or 0),
        "by_mime": by_mime,
    }


def overview(settings: Settings, models) -> dict:
    """Documents, current auto-tags and summaries, index size and the active adapters' metrics."""
    versions = models.versions
    with session_factory(settings)() as session:
        stats = repo.stats(session)
        tagged = _current(session, PredictedLabel, versions.get("classify"), PredictedLabel.kind == "category")
        summarised = _current(session, PredictedSummary, versions.get("summarise"))
        live = index_builds.live_build(session)
        examples = auto_tagged_examples(session)
        adapters = {
            task: {
                "version": v.id, "kind": v.kind, "primary_metric": v.primary_metric,
                "value": v.metrics.get(v.primary_metric), "baseline": v.baseline.get(v.primary_metric),
            }
            for task, v in active_versions(session, models.adapters.backbone.weights_hash).items()
        }
    return {
        "documents": stats["documents"],
        "chunks": stats["chunks"],
        "labelled_documents": stats["labelled_documents"],
        "auto_tagged_documents": tagged,
        "summarised_documents": summarised,
        "index": {"vectors": live.count if live else 0, "embed_key": live.embed_key if live else None},
        "adapters": adapters,
        "examples": examples,
    }


def auto_tagged_examples(session: Session, limit: int = 4) -> list[dict]:
    """A few public documents as the models left them (one per predicted category first), for a person to read.

    Metrics on a few validation documents can hide that every document got the same tags; the closing report
    shows the outputs themselves, beside the gold labels where the file has them.
    """
    rows = session.execute(
        select(Document.id, Document.title, Document.path, PredictedLabel.label, PredictedLabel.score, PredictedLabel.status)
        .join(PredictedLabel, PredictedLabel.document_id == Document.id)
        .where(Document.status == "active", PredictedLabel.kind == "category", users.readable_filter(None))
        .order_by(Document.path)
    ).all()
    picked, seen = [], set()
    for row in rows:  # spread over categories, then fill up in path order
        if row.label not in seen:
            picked.append(row)
            seen.add(row.label)
    picked = (picked + [r for r in rows if r not in picked])[:limit]
    ids = [r.id for r in picked]
    tags: dict[int, list[tuple[str, float]]] = {}
    for doc_id, tag, score in session.execute(
        select(PredictedLabel.document_id, PredictedLabel.label, PredictedLabel.score)
        .where(PredictedLabel.document_id.in_(ids), PredictedLabel.kind == "tag", PredictedLabel.status == "applied")
        .order_by(PredictedLabel.score.desc())
    ):
        tags.setdefault(doc_id, []).append((tag, score))
    summaries = dict(session.execute(
        select(PredictedSummary.document_id, PredictedSummary.summary).where(PredictedSummary.document_id.in_(ids))
    ).all())
    gold_cats, gold_tags = gold_categories(session, ids), gold_tags_by_document(session, ids)
    return [
        {
            "id": r.id, "title": r.title, "path": r.path,
            "category": None if r.status == "abstained" else r.label,
            "category_score": round(r.score, 3), "needs_review": r.status == "abstained",
            "tags": [{"tag": t, "score": round(p, 3)} for t, p in tags.get(r.id, [])],
            "summary": summaries.get(r.id),
            "gold": {"category": gold_cats.get(r.id, (None,))[0], "tags": gold_tags.get(r.id, [])},
        }
        for r in picked
    ]


def _current(session, table, adapter_version: int | None, *extra) -> int:
    """Active documents with an output from the active adapter for their current version."""
    if adapter_version is None:
        return 0
    query = (
        select(func.count(func.distinct(table.document_id)))
        .join(Document, Document.id == table.document_id)
        .where(
            Document.status == "active", table.adapter_version == adapter_version,
            table.document_version == Document.version, *extra,
        )
    )
    return int(session.scalar(query) or 0)


def example_query(settings: Settings) -> str | None:
    """A query worth showing: the title of the first public, gold-summarised document."""
    with session_factory(settings)() as session:
        query = (
            select(Document.title)
            .join(GoldLabel, GoldLabel.document_id == Document.id)
            .where(Document.status == "active", GoldLabel.summary.is_not(None), users.readable_filter(None))
            .order_by(Document.id)
            .limit(1)
        )
        return session.scalar(query)
