"""People's verdicts on labels: gold with provenance, kept apart from front matter and from predictions.

A reviewer confirms a prediction, replaces it, adds a label nothing predicted, or rejects a predicted
tag. Each verdict is one `review_labels` row saying who, when, and which prediction (label, score,
adapter version) they saw. Predictions never become gold by themselves: only a verdict makes them so.
What counts as gold when front matter and reviews disagree is decided in store/queries.py (front matter wins).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kb_pipeline.errors import ReviewError
from kb_pipeline.ingest.identifiers import MAX_IDENTIFIER_CHARS, normalise_identifier, normalise_identifiers
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
