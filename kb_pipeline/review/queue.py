"""The review queue: the documents whose predictions a person should look at first.

A reviewer's minutes are best spent where the model is least sure, so the queue puts first the documents
whose category the classifier abstained on ("needs review"), then close calls (a small margin between the
top two categories), then documents with a tag just above or below its threshold. Documents whose category
a person already gave (in the file's front matter or in a review) leave the queue. The order is computed in
SQL, so a page of the queue costs a few queries whatever the size of the KB. Who may see which document
follows the one fail-closed rule of search (`users.readable_filter`).

A prediction written before the classifier stored margins has margin NULL; the category margin is then
estimated from its score: with top probability p the runner-up has at most 1 - p, so the margin is at least
max(0, 2p - 1), the estimate used (and reported as estimated).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, case, func, literal, select, true
from sqlalchemy.orm import Session, aliased

from kb_pipeline.store import users
from kb_pipeline.store.reviews import ReviewError, label_views
from kb_pipeline.store.schema import AdapterVersion, Document, GoldLabel, PredictedLabel, ReviewLabel

CLOSE_CALL = 0.2  # a category margin below this is a close call
NEAR_TAG = 0.1  # a tag whose score is within this of its threshold is a close call
MAX_LIMIT = 1000


def _estimated_margin(category):
    """The stored category margin, else the lower bound max(0, 2p - 1) from the top score."""
    bound = 2 * category.score - 1
    return func.coalesce(category.margin, case((bound > 0, bound), else_=literal(0.0)))


def _closest_tag():
    """Per document: the smallest |score - threshold| among its tags with a known margin."""
    return (
        select(PredictedLabel.document_id.label("document_id"), func.min(func.abs(PredictedLabel.margin)).label("gap"))
        .where(PredictedLabel.kind == "tag", PredictedLabel.margin.is_not(None))
        .group_by(PredictedLabel.document_id)
        .subquery()
    )


def _has_gold_category(document_id_column):
    front = select(GoldLabel.document_id).where(
        GoldLabel.document_id == document_id_column, GoldLabel.category.is_not(None)
    )
    reviewed = select(ReviewLabel.document_id).where(
        ReviewLabel.document_id == document_id_column, ReviewLabel.kind == "category", ReviewLabel.verdict == "accept"
    )
    return front.exists() | reviewed.exists()


def _queue_query(groups: Sequence[str] | None, operator: bool, include_reviewed: bool):
    """(document id, labelled, tier, key) rows in queue order, before limit/offset."""
    category = aliased(PredictedLabel)
    closest = _closest_tag()
    margin = _estimated_margin(category)
    tier = case(
        (category.status == "abstained", 0),
        (margin < CLOSE_CALL, 1),
        (closest.c.gap < NEAR_TAG, 2),
        else_=3,
    )
    key = case((tier == 2, closest.c.gap), else_=margin)
    labelled = _has_gold_category(Document.id)
    access = true() if operator else users.readable_filter(groups)
    query = (
        select(Document.id, labelled.label("labelled"), tier.label("tier"), key.label("key"))
        .join(category, and_(category.document_id == Document.id, category.kind == "category"))
        .join(closest, closest.c.document_id == Document.id, isouter=True)
        .where(Document.status == "active", access)
    )
    if not include_reviewed:
        query = query.where(~labelled)
    return query, labelled, tier, key


def review_queue(
    session: Session,
    groups: Sequence[str] | None,
    limit: int = 20,
    *,
    offset: int = 0,
    include_reviewed: bool = False,
    operator: bool = False,
) -> list[dict]:
    """The documents to review, least certain first, as JSON-ready dicts (see `queue_item`).

    groups: the reader's groups; None or empty is an anonymous reader (documents without ACL only).
    operator: the KB operator's view (every active document), what the CLI shows without --user.
    Documents with a gold category (front matter or review) are left out, or with include_reviewed put
    after all the others. Only documents with a predicted category (enriched) can be queued.
    """
    if limit < 1 or limit > MAX_LIMIT:
        raise ReviewError(f"limit: must be between 1 and {MAX_LIMIT}, not {limit}")
    if offset < 0:
        raise ReviewError(f"offset: must not be negative, not {offset}")
    query, labelled, tier, key = _queue_query(groups, operator, include_reviewed)
    order = [case((labelled, 1), else_=0), tier, key, Document.id]
    rows = session.execute(query.order_by(*order).limit(limit).offset(offset)).all()
    ids = [row[0] for row in rows]
    views = label_views(session, ids)
    docs = {d.id: d for d in session.scalars(select(Document).where(Document.id.in_(ids)))}
    thresholds = _abstain_thresholds(session, [v["predicted"]["category"] for v in views.values()])
    return [queue_item(docs[row[0]], views[row[0]], row[2], thresholds) for row in rows]


def queue_counts(session: Session, groups: Sequence[str] | None, *, operator: bool = False) -> dict[str, int]:
    """How many readable documents are queued, and how many of them need review (abstained category)."""
    query, _, tier, _ = _queue_query(groups, operator, include_reviewed=False)
    sub = query.subquery()
    total, abstained = session.execute(
        select(func.count(), func.coalesce(func.sum(case((sub.c.tier == 0, 1), else_=0)), 0))
    ).one()
    return {"queued": int(total), "needs_review": int(abstained)}


def _abstain_thresholds(session: Session, categories: list[dict | None]) -> dict[int, float]:
    """adapter version -> the category confidence threshold it abstains below, where the version records one."""
    versions = {c["adapter_version"] for c in categories if c and c["status"] == "abstained"}
    if not versions:
        return {}
    out = {}
    for version_id, metrics in session.execute(
        select(AdapterVersion.id, AdapterVersion.metrics).where(AdapterVersion.id.in_(versions))
    ):
        value = (metrics or {}).get("abstain_below")  # training/calibration.py records it with the metrics
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[version_id] = float(value)
    return out


def queue_item(doc: Document, view: dict, tier: int, thresholds: dict[int, float]) -> dict:
    """One queue entry: the document, its predictions and gold labels, and why it is queued."""
    predicted = view["predicted"]
    return {
        "id": doc.id,
        "title": doc.title,
        "path": doc.path,
        "version": doc.version,
        "needs_review": view["needs_review"],
        "reason": reason(predicted["category"], predicted["tags"], tier, thresholds),
        "category": predicted["category"],
        "tags": [t for t in predicted["tags"] if t["status"] == "applied"],
        "near_tags": [t for t in predicted["tags"] if t["status"] == "near"],
        "gold": view["gold"],
        "rejected_tags": [t["tag"] for t in view["rejected_tags"]],
    }


def reason(category: dict | None, tags: list[dict], tier: int, thresholds: dict[int, float]) -> str:
    """Why a document is queued, in words a reviewer reads ("close call: history 0.46, margin 0.07")."""
    if category is None:
        return "no category predicted"
    label, score, margin = category["label"], category["score"], category["margin"]
    about = "at least " if category["margin_estimated"] else ""
    if tier == 0:
        limit = thresholds.get(category["adapter_version"])
        below = f"< {limit:.2f}" if limit is not None else "below the confidence threshold"
        return f"needs review: category confidence {score:.2f} {below} (best guess {label})"
    if tier == 1:
        return f"close call: {label} {score:.2f}, margin {about}{margin:.2f} over the runner-up"
    near = [t for t in tags if t["margin"] is not None]
    if tier == 2 and near:
        tag = min(near, key=lambda t: abs(t["margin"]))
        side = "below" if tag["margin"] < 0 else "above"
        threshold = tag["score"] - tag["margin"]
        return f"tag near its threshold: {tag['tag']} {tag['score']:.2f} just {side} {threshold:.2f}"
    return f"least certain left: {label} {score:.2f}, margin {about}{margin:.2f}"
