"""People's verdicts on labels: gold with provenance, kept apart from front matter and from predictions.

A reviewer confirms a prediction, replaces it, adds a label nothing predicted, or rejects a predicted
tag. Each verdict is one `review_labels` row saying who, when, and which prediction (label, score,
adapter version) they saw. Predictions never become gold by themselves: only a verdict makes them so.
What counts as gold when front matter and reviews disagree is decided in store/queries.py (front matter wins);
`label_views` attaches the provenance (the file, a reviewer, or the model) so every caller tells the same story.
The caller decides who may read the document (search.access.find_readable); nothing here filters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kb_pipeline.errors import ReviewError
from kb_pipeline.ingest.identifiers import MAX_IDENTIFIER_CHARS, normalise_identifier, normalise_identifiers
from kb_pipeline.store.queries import gold_categories, gold_tag_origins
from kb_pipeline.store.schema import Document, GoldLabel, GoldTag, PredictedLabel, ReviewLabel, utcnow


@dataclass(frozen=True)
class Verdict:
    """One recorded decision, as callers report it."""

    kind: str  # category | tag
    label: str
    verdict: str  # accept | reject
    predicted_label: str | None
    predicted_score: float | None

    @property
    def action(self) -> str:
        """confirmed / replaced / added / rejected: what the person did to the model's output."""
        if self.verdict == "reject":
            return "rejected"
        if self.predicted_label is None:
            return "added"
        return "confirmed" if self.predicted_label == self.label else "replaced"

    def as_dict(self) -> dict:
        return {
            "kind": self.kind, "label": self.label, "verdict": self.verdict, "action": self.action,
            "predicted_label": self.predicted_label, "predicted_score": self.predicted_score,
        }


def _label(value: str, field: str) -> str:
    label = normalise_identifier(value)
    if not label:
        raise ReviewError(f"{field}: a label cannot be empty")
    if len(label) > MAX_IDENTIFIER_CHARS:
        raise ReviewError(f"{field}: {label[:40]!r}... is longer than {MAX_IDENTIFIER_CHARS} characters")
    return label


def _reviewer(value: str) -> str:
    name = " ".join(str(value).split())
    if not name:
        raise ReviewError("reviewer: a review needs the name of the person making it")
    if len(name) > MAX_IDENTIFIER_CHARS:
        raise ReviewError(f"reviewer: {name[:40]!r}... is longer than {MAX_IDENTIFIER_CHARS} characters")
    return name


def _front_matter(session: Session, doc_id: int) -> tuple[str | None, set[str]]:
    """The category and tags the file's front matter sets (they win over any review)."""
    gold = session.get(GoldLabel, doc_id)
    tags = set(session.scalars(select(GoldTag.tag).where(GoldTag.document_id == doc_id)))
    return (gold.category if gold is not None else None), tags


def _active_document(session: Session, doc_id: int) -> Document:
    doc = session.get(Document, doc_id)
    if doc is None or doc.status != "active":
        raise ReviewError(f"document {doc_id}: no such active document")
    return doc


def _predictions(session: Session, doc_id: int) -> tuple[PredictedLabel | None, dict[str, PredictedLabel]]:
    """The document's predicted category row (applied or abstained) and its predicted tag rows by label."""
    rows = list(session.scalars(select(PredictedLabel).where(PredictedLabel.document_id == doc_id)))
    category = next((r for r in rows if r.kind == "category"), None)
    return category, {r.label: r for r in rows if r.kind == "tag"}


def _write(session: Session, doc: Document, reviewer: str, kind: str, label: str, verdict: str,
           predicted: PredictedLabel | None) -> Verdict:
    session.execute(delete(ReviewLabel).where(
        ReviewLabel.document_id == doc.id, ReviewLabel.kind == kind, ReviewLabel.label == label
    ))
    row = ReviewLabel(
        document_id=doc.id, kind=kind, label=label, verdict=verdict, reviewer=reviewer, reviewed_at=utcnow(),
        predicted_label=predicted.label if predicted is not None else None,
        predicted_score=float(predicted.score) if predicted is not None else None,
        adapter_version=predicted.adapter_version if predicted is not None else None,
        document_version=doc.version, content_sha256=doc.content_sha256,
    )
    session.add(row)
    return Verdict(kind, label, verdict, row.predicted_label, row.predicted_score)


def set_labels(
    session: Session,
    doc_id: int,
    reviewer: str,
    *,
    category: str | None = None,
    tags: Sequence[str] | None = None,
    add_tags: Iterable[str] = (),
    remove_tags: Iterable[str] = (),
) -> list[Verdict]:
    """Record a person's labels for one document; returns what was recorded.

    category: the document's category (replaces any reviewed category). tags: the document's complete tag
    set (tags predicted or reviewed before and not in it are rejected; the file's own tags stay). add_tags /
    remove_tags: accept or reject single tags (the page's per-tag buttons). A category or a removed tag that
    contradicts the file's front matter is refused: the file wins, so such a review would change nothing.
    """
    reviewer = _reviewer(reviewer)
    doc = _active_document(session, doc_id)
    predicted_category, predicted_tags = _predictions(session, doc_id)
    front_category, front_tags = _front_matter(session, doc_id)
    out: list[Verdict] = []
    if category is not None:
        label = _label(category, "category")
        if front_category is not None and front_category != label:
            raise ReviewError(
                f"category: the file's front matter sets {front_category!r}, which wins over a review; edit the file"
            )
        session.execute(delete(ReviewLabel).where(ReviewLabel.document_id == doc_id, ReviewLabel.kind == "category"))
        out.append(_write(session, doc, reviewer, "category", label, "accept", predicted_category))
    accept = list(normalise_identifiers(_label(t, "tags") for t in (tags or ()))) + [_label(t, "tags") for t in add_tags]
    reject = [_label(t, "tags") for t in remove_tags]
    if tags is not None:
        reviewed = session.scalars(select(ReviewLabel.label).where(
            ReviewLabel.document_id == doc_id, ReviewLabel.kind == "tag", ReviewLabel.verdict == "accept"
        ))
        applied = [t for t, row in predicted_tags.items() if row.status == "applied"]
        reject += [t for t in dict.fromkeys([*applied, *reviewed]) if t not in accept and t not in front_tags]
    fixed = sorted(set(reject) & front_tags)
    if fixed:
        raise ReviewError(f"tags: {', '.join(fixed)} set by the file's front matter, which wins over a review; edit the file")
    clash = sorted(set(accept) & set(reject))
    if clash:
        raise ReviewError(f"tags: {', '.join(clash)} both added and removed")
    for tag in dict.fromkeys(accept):
        out.append(_write(session, doc, reviewer, "tag", tag, "accept", predicted_tags.get(tag)))
    for tag in dict.fromkeys(reject):
        out.append(_write(session, doc, reviewer, "tag", tag, "reject", predicted_tags.get(tag)))
    if not out:
        raise ReviewError(f"document {doc_id}: nothing to record (give a category or tags)")
    session.flush()
    return out


def confirm_predictions(session: Session, doc_id: int, reviewer: str) -> list[Verdict]:
    """Accept what the document shows: the model's category (even an abstained one: the person vouches for
    it) unless the front matter sets one, and its applied tags no reviewer rejected before."""
    _active_document(session, doc_id)
    predicted_category, predicted_tags = _predictions(session, doc_id)
    front_category, _ = _front_matter(session, doc_id)
    rejected = set(session.scalars(select(ReviewLabel.label).where(
        ReviewLabel.document_id == doc_id, ReviewLabel.kind == "tag", ReviewLabel.verdict == "reject"
    )))
    applied = [t for t, row in predicted_tags.items() if row.status == "applied" and t not in rejected]
    category = predicted_category.label if predicted_category is not None and front_category is None else None
    if category is None and not applied:
        raise ReviewError(f"document {doc_id}: no predictions to confirm (run `kb enrich` first, or use `set`)")
    return set_labels(session, doc_id, reviewer, category=category, add_tags=applied)


def reviews_of(session: Session, doc_ids: Sequence[int]) -> dict[int, list[ReviewLabel]]:
    """document id -> its review rows (category first, then tags by label)."""
    out: dict[int, list[ReviewLabel]] = {}
    query = select(ReviewLabel).where(ReviewLabel.document_id.in_(list(doc_ids))).order_by(
        ReviewLabel.document_id, ReviewLabel.kind, ReviewLabel.label
    )
    for row in session.scalars(query):
        out.setdefault(row.document_id, []).append(row)
    return out


def reviewed_document_ids(session: Session) -> set[int]:
    return set(session.scalars(select(ReviewLabel.document_id).distinct()))


# --- provenance: where each of a document's labels came from (kb show, kb export, kb review, the web pages) ---


def document_label_view(session: Session, doc_id: int) -> dict | None:
    """One document's labels with provenance (see `label_views`), or None when there is no such document."""
    return label_views(session, [doc_id]).get(doc_id)


def label_views(session: Session, doc_ids: Sequence[int]) -> dict[int, dict]:
    """document id -> {needs_review, gold: {category, tags, overridden}, predicted: {category, tags}, rejected_tags}.

    gold.category / gold.tags[]: label, origin (front_matter | review) and, for a review, reviewer,
    reviewed_at, action (confirmed | replaced | added), the prediction seen (label, score, adapter version)
    and whether the document changed since (content_changed). gold.overridden: reviews the file's front
    matter overrides. predicted: the model's rows (applied, abstained, near) with score, margin (estimated
    from the score when the classifier did not store one), adapter version and whether they are stale.
    """
    ids = list(dict.fromkeys(doc_ids))
    if not ids:
        return {}
    docs = {d.id: d for d in session.scalars(select(Document).where(Document.id.in_(ids)))}
    reviews: dict[int, list[ReviewLabel]] = {}
    for row in session.scalars(select(ReviewLabel).where(ReviewLabel.document_id.in_(ids))):
        reviews.setdefault(row.document_id, []).append(row)
    predicted: dict[int, list[PredictedLabel]] = {}
    query = select(PredictedLabel).where(PredictedLabel.document_id.in_(ids))
    for row in session.scalars(query.order_by(PredictedLabel.score.desc(), PredictedLabel.label)):
        predicted.setdefault(row.document_id, []).append(row)
    categories = gold_categories(session, ids)
    tag_origins = gold_tag_origins(session, ids)
    return {
        d: _view(docs[d], reviews.get(d, []), predicted.get(d, []), categories.get(d), tag_origins.get(d, {}))
        for d in ids
        if d in docs
    }


def _view(doc: Document, reviews: list[ReviewLabel], predicted: list[PredictedLabel],
          category: tuple[str, str] | None, tag_origins: dict[str, str]) -> dict:
    reviewed = {(r.kind, r.label): r for r in reviews}
    gold_category = None
    if category is not None:
        label, origin = category
        gold_category = _gold(doc, label, origin, reviewed.get(("category", label)) if origin == "review" else None)
    gold_tags = [
        _gold(doc, tag, origin, reviewed.get(("tag", tag)) if origin == "review" else None)
        for tag, origin in sorted(tag_origins.items())
    ]
    overridden = [
        _review(doc, r) | {"kind": r.kind, "label": r.label, "verdict": r.verdict, "overridden_by": "front_matter"}
        for r in sorted(reviews, key=lambda r: (r.kind, r.label))
        if (r.kind == "category" and r.verdict == "accept" and category and category[1] == "front_matter"
            and category[0] != r.label)
        or (r.kind == "tag" and r.verdict == "reject" and tag_origins.get(r.label) == "front_matter")
    ]
    rejected = [
        {"tag": r.label} | _review(doc, r)
        for r in sorted(reviews, key=lambda r: r.label)
        if r.kind == "tag" and r.verdict == "reject" and r.label not in tag_origins
    ]
    predicted_category = next((_predicted(doc, p, reviewed) for p in predicted if p.kind == "category"), None)
    return {
        "document_id": doc.id,
        "version": doc.version,
        "needs_review": bool(predicted_category and predicted_category["status"] == "abstained" and gold_category is None),
        "gold": {"category": gold_category, "tags": gold_tags, "overridden": overridden},
        "predicted": {
            "category": predicted_category,
            "tags": [_predicted(doc, p, reviewed) for p in predicted if p.kind == "tag"],
        },
        "rejected_tags": rejected,
    }


def _gold(doc: Document, label: str, origin: str, review: ReviewLabel | None) -> dict:
    empty = dict.fromkeys(("reviewer", "reviewed_at", "action", "predicted_label", "predicted_score",
                           "adapter_version", "document_version", "content_changed"))
    return {"label": label, "origin": origin} | (_review(doc, review) if review is not None else empty)


def _review(doc: Document, row: ReviewLabel) -> dict:
    verdict = Verdict(row.kind, row.label, row.verdict, row.predicted_label, row.predicted_score)
    return {
        "reviewer": row.reviewer,
        "reviewed_at": row.reviewed_at.isoformat() if row.reviewed_at else None,
        "action": verdict.action,
        "predicted_label": row.predicted_label,
        "predicted_score": _round(row.predicted_score),
        "adapter_version": row.adapter_version,
        "document_version": row.document_version,
        "content_changed": row.content_sha256 != doc.content_sha256,
    }


def _predicted(doc: Document, row: PredictedLabel, reviewed: dict) -> dict:
    margin, estimated = row.margin, False
    if margin is None and row.kind == "category":
        margin, estimated = max(0.0, 2 * row.score - 1), True
    review = reviewed.get((row.kind, row.label))
    out = {
        "tag" if row.kind == "tag" else "label": row.label,
        "score": _round(row.score),
        "status": row.status,
        "margin": _round(margin),
        "adapter_version": row.adapter_version,
        "document_version": row.document_version,
        "stale": row.document_version != doc.version,
    }
    if row.kind == "category":
        return out | {"margin_estimated": estimated}
    return out | {"verdict": review.verdict if review is not None else None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
