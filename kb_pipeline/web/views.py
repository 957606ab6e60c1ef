"""What the API returns and the pages show, computed once for both: search with facets, a document, labels.

Every function takes the caller's Filters/Reader and applies the ACL in its SQL, so the pages cannot show
more than the API and neither more than `kb search --user`.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from kb_pipeline.errors import SearchError
from kb_pipeline.review import document_label_view
from kb_pipeline.search.access import Reader, find_readable
from kb_pipeline.search.hybrid import Filters, allowed_condition, document_tags, query_terms
from kb_pipeline.store.queries import gold_categories, gold_tag_origins
from kb_pipeline.store.schema import Document, GoldLabel, PredictedLabel, PredictedSummary, ReviewLabel
from kb_pipeline.web.engine import Generation

FACET_TTL_S = 5.0  # facet counts ignore the query; per (groups, filters) they are reused this long
MAX_K = 100
_IN_BATCH = 5000  # ids per IN (...): SQLite allows 32766 parameters


class NotFound(LookupError):
    """404: no such document, or one the caller may not read (the same answer, so nothing leaks)."""


class Unavailable(RuntimeError):
    """503: dense search asked before any index was built or loaded."""


def _batches(ids: Sequence[int]):
    for start in range(0, len(ids), _IN_BATCH):
        yield ids[start:start + _IN_BATCH]


class FacetCache:
    """Facet counts per (groups, tags, category), kept FACET_TTL_S seconds; cleared when this process changes labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[float, dict]] = {}

    def get(self, session: Session, filters: Filters) -> dict:
        key = (filters.groups, tuple(sorted(t.lower() for t in filters.tags)), (filters.category or "").lower())
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit and now - hit[0] < FACET_TTL_S:
                return hit[1]
        value = facet_counts(session, filters)
        with self._lock:
            if len(self._entries) > 1000:
                self._entries.clear()
            self._entries[key] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def facet_counts(session: Session, filters: Filters) -> dict:
    """Tag and category counts over the documents the caller may read that match the filters (not the query)."""
    ids = list(session.scalars(select(Document.id).where(allowed_condition(filters)).order_by(Document.id)))
    tags: Counter = Counter()
    categories: Counter = Counter()
    for batch in _batches(ids):
        for doc_tags in document_tags(session, batch).values():
            tags.update(doc_tags)
        gold = gold_categories(session, batch)
        categories.update(label for label, _ in gold.values())
        predicted = select(PredictedLabel.document_id, PredictedLabel.label).where(
            PredictedLabel.document_id.in_(batch), PredictedLabel.kind == "category", PredictedLabel.status == "applied"
        )
        categories.update(label for doc_id, label in session.execute(predicted) if doc_id not in gold)
    order = lambda c: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))  # noqa: E731
    return {"documents": len(ids),
            "tags": [{"value": v, "count": n} for v, n in order(tags)],
            "categories": [{"value": v, "count": n} for v, n in order(categories)]}


def search_view(session: Session, gen: Generation, facets: FacetCache | None, *, q: str, k: int, mode: str,
                filters: Filters) -> dict:
    """`kb search --json`'s result objects (+ their labels told apart), facet counts and the versions that answered."""
    if not 1 <= k <= MAX_K:
        raise SearchError(f"k must be between 1 and {MAX_K}")
    used = mode
    if mode != "keyword" and not gen.dense:
        if mode == "dense":
            raise Unavailable(gen.problem or "dense search is not available yet")
        used = "keyword"  # hybrid without an index: the keyword half still answers
    results = gen.searcher.search(session, q, k=k, mode=used, filters=filters) if q.strip() else []
    labels = result_labels(session, [r["doc_id"] for r in results])
    for r in results:
        r["labels"] = labels.get(r["doc_id"], {"gold": [], "predicted": [], "category": None})
    return {
        "query": q, "mode": used, "k": k,
        "filters": {"tags": list(filters.tags), "category": filters.category},
        "results": results,
        "facets": (facets.get(session, filters) if facets else facet_counts(session, filters)),
        "versions": gen.versions(),
    }


def result_labels(session: Session, doc_ids: Sequence[int]) -> dict[int, dict]:
    """Per document: gold tags (with where they came from), predicted tags shown (with score), the category."""
    if not doc_ids:
        return {}
    origins = gold_tag_origins(session, doc_ids)
    categories = gold_categories(session, doc_ids)
    rejected = {tuple(row) for row in session.execute(select(ReviewLabel.document_id, ReviewLabel.label).where(
        ReviewLabel.document_id.in_(list(doc_ids)), ReviewLabel.kind == "tag", ReviewLabel.verdict == "reject"))}
    out = {d: {"gold": [{"tag": t, "origin": o} for t, o in sorted(origins.get(d, {}).items())], "predicted": [],
               "category": ({"label": categories[d][0], "origin": categories[d][1]} if d in categories else None)}
           for d in doc_ids}
    rows = session.scalars(select(PredictedLabel).where(
        PredictedLabel.document_id.in_(list(doc_ids)), PredictedLabel.status.in_(("applied", "abstained"))
    ).order_by(PredictedLabel.score.desc()))
    for p in rows:
        entry = out[p.document_id]
        if p.kind == "category":
            if entry["category"] is None:
                entry["category"] = {"label": p.label, "origin": "model", "score": round(p.score, 4), "status": p.status}
        elif p.label not in origins.get(p.document_id, {}) and (p.document_id, p.label) not in rejected:
            entry["predicted"].append({"tag": p.label, "score": round(p.score, 4), "adapter_version": p.adapter_version})
    return out


def readable_document(session: Session, ref: str, reader: Reader) -> Document:
    doc = find_readable(session, ref, reader) if ref.isdigit() else None
    if doc is None or doc.status != "active":
        raise NotFound(f"no document {ref!r}")
    return doc


def summary_of(session: Session, doc: Document) -> dict | None:
    """The front matter's summary, else the model's (with its adapter version and whether it is stale)."""
    gold = session.get(GoldLabel, doc.id)
    if gold is not None and gold.summary:
        return {"text": gold.summary, "origin": "front_matter"}
    summary = session.get(PredictedSummary, doc.id)
    if summary is None:
        return None
    return {"text": summary.summary, "origin": "model", "adapter_version": summary.adapter_version,
            "stale": summary.document_version != doc.version}


def document_view(session: Session, doc: Document) -> dict:
    """Text (chunks), metadata, summary, and labels as `kb review` tells them apart (review.document_label_view)."""
    return {
        "id": doc.id, "title": doc.title, "path": doc.path, "uri": doc.uri, "mime": doc.mime, "size": doc.size,
        "version": doc.version, "updated_at": doc.updated_at.isoformat() if doc.updated_at else None,
        "metadata": doc.meta or {},
        "chunks": [{"ordinal": c.ordinal, "text": c.text, "char_start": c.char_start, "char_end": c.char_end}
                   for c in doc.chunks],
        "summary": summary_of(session, doc),
        "labels": document_label_view(session, doc.id),
    }


def tag_rows(labels: dict) -> list[dict]:
    """One row per tag for the pages: gold first (with provenance), then predicted (with score), then rejected."""
    gold = {t["label"]: t for t in labels["gold"]["tags"]}
    rows = [{"tag": tag, "gold": g, "predicted": None, "rejected": None} for tag, g in gold.items()]
    rejected = {t["tag"]: t for t in labels["rejected_tags"]}
    for p in labels["predicted"]["tags"]:
        if p["tag"] in gold:
            rows[list(gold).index(p["tag"])]["predicted"] = p
        else:
            rows.append({"tag": p["tag"], "gold": None, "predicted": p, "rejected": rejected.pop(p["tag"], None)})
    rows += [{"tag": tag, "gold": None, "predicted": None, "rejected": r} for tag, r in rejected.items()]
    return rows


def highlight(text: str, query: str) -> list[tuple[str, bool]]:
    """The text cut into (part, matches a query word) pieces; the template marks the matches (as text)."""
    words = sorted({w for w in query_terms(query) if len(w) > 1}, key=len, reverse=True)
    if not words:
        return [(text, False)]
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
    parts, last = [], 0
    for m in pattern.finditer(text):
        if m.start() > last:
            parts.append((text[last:m.start()], False))
        parts.append((m.group(), True))
        last = m.end()
    if last < len(text):
        parts.append((text[last:], False))
    return parts
