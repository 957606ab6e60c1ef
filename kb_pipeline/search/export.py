"""`kb export`: every active document with its gold labels beside the model's predictions.

Each line carries the document's `acl` (groups allowed to read it; empty: everyone), so a consumer of
the file can apply the same access rule as search; with a reader other than the operator, documents
that reader may not read are left out altogether. Gold is the file's front matter, else a reviewer's
labels; `provenance` says which, who reviewed when, and which prediction they confirmed or replaced.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from kb_pipeline.search.access import OPERATOR, Reader, readable
from kb_pipeline.store.queries import gold_categories, gold_tags_by_document
from kb_pipeline.store.reviews import label_views
from kb_pipeline.store.schema import Document, DocumentAcl, GoldLabel, PredictedLabel, PredictedSummary


def export_rows(session: Session, batch: int = 500, reader: Reader = OPERATOR) -> Iterator[dict]:
    """Streams the active documents `reader` may read in id order, a few queries per batch whatever the KB size."""
    last = 0
    while True:
        docs = session.scalars(
            select(Document)
            .where(Document.status == "active", Document.id > last, readable(reader))
            .order_by(Document.id)
            .limit(batch)
        ).all()
        if not docs:
            return
        ids = [d.id for d in docs]
        gold = {g.document_id: g for g in session.scalars(select(GoldLabel).where(GoldLabel.document_id.in_(ids)))}
        gold_tags = gold_tags_by_document(session, ids)
        categories = gold_categories(session, ids)  # front matter, else a reviewer's
        labels: dict[int, list[PredictedLabel]] = {}
        predicted = select(PredictedLabel).where(PredictedLabel.document_id.in_(ids))
        for p in session.scalars(predicted.order_by(PredictedLabel.score.desc())):
            labels.setdefault(p.document_id, []).append(p)
        summary_rows = session.scalars(select(PredictedSummary).where(PredictedSummary.document_id.in_(ids)))
        summaries = {s.document_id: s for s in summary_rows}
        acl: dict[int, list[str]] = {}
        query = select(DocumentAcl.document_id, DocumentAcl.group_name).where(DocumentAcl.document_id.in_(ids))
        for doc_id, group in session.execute(query.order_by(DocumentAcl.group_name)):
            acl.setdefault(doc_id, []).append(group)
        views = label_views(session, ids)
        for d in docs:
            row = _row(d, gold.get(d.id), gold_tags.get(d.id, []), labels.get(d.id, []), summaries.get(d.id),
                       categories.get(d.id, (None, None))[0])
            yield row | {"acl": acl.get(d.id, [])} | _provenance(views.get(d.id))
        last = ids[-1]


def _provenance(view: dict | None) -> dict:
    """Where the gold labels came from (front matter or which reviewer, confirming which prediction), the
    tags reviewers rejected, the model's near-threshold tags, and whether the document needs review."""
    if view is None:
        return {"needs_review": False, "provenance": None}
    gold, predicted = view["gold"], view["predicted"]
    return {
        "needs_review": view["needs_review"],
        "provenance": {
            "category": gold["category"],
            "tags": gold["tags"],
            "rejected_tags": view["rejected_tags"],
            "overridden_by_front_matter": gold["overridden"],
            "predicted_category_status": predicted["category"]["status"] if predicted["category"] else None,
            "near_tags": [t for t in predicted["tags"] if t["status"] == "near"],
        },
    }


def _row(doc: Document, gold: GoldLabel | None, gold_tags: list[str], labels: list, summary,
         category_gold: str | None = None) -> dict:
    category = next((p for p in labels if p.kind == "category"), None)
    tags = [p for p in labels if p.kind == "tag" and p.status == "applied"]  # near-threshold tags are not applied
    return {
        "id": doc.id,
        "path": doc.path,
        "title": doc.title,
        "version": doc.version,
        "gold": {
            "category": category_gold,
            "tags": gold_tags,
            "summary": gold.summary if gold else None,
        },
        "predicted": {
            "category": category.label if category else None,
            "category_score": round(category.score, 6) if category else None,
            "tags": [{"tag": p.label, "score": round(p.score, 6)} for p in tags],
            "summary": summary.summary if summary else None,
        },
        "adapter_versions": {
            "classify": category.adapter_version if category else None,
            "summarise": summary.adapter_version if summary else None,
        },
        "stale": bool(
            (category and category.document_version != doc.version)
            or (summary and summary.document_version != doc.version)
        ),
    }
