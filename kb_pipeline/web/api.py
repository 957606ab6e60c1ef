"""The JSON API under /api (documented at /docs and /openapi.json)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from kb_pipeline.review import queue_counts, review_queue
from kb_pipeline.search.export import export_rows
from kb_pipeline.search.hybrid import Filters
from kb_pipeline.store import reviews
from kb_pipeline.store.queries import list_versions
from kb_pipeline.web.auth import CSRF_HEADER, AuthError, Caller, check_csrf
from kb_pipeline.web.deps import DB, Who, resolve_caller, state
from kb_pipeline.web.views import document_view, readable_document, search_view


class FastJSON(JSONResponse):
    """The view dicts are JSON-ready already: dumped as they are, skipping FastAPI's generic encoder (~7 ms a search)."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


router = APIRouter(prefix="/api", default_response_class=FastJSON)


def require_reviewer(who: Caller) -> None:
    """Label changes and the review queue: a signed-in member of a group in KB_REVIEWER_GROUPS."""
    if who.anonymous:
        raise AuthError("sign in (Authorization: Bearer TOKEN) to review labels")
    if not who.reviewer:
        raise AuthError(f"{who.user!r} is not in a reviewer group (KB_REVIEWER_GROUPS)", 403)


@router.get("/search", summary="Hybrid search with facets, as `kb search --json`")
def api_search(
    request: Request,
    q: Annotated[str, Query(description="What to look for.")] = "",
    k: Annotated[int, Query(ge=1, le=100)] = 10,
    mode: Literal["hybrid", "dense", "keyword"] = "hybrid",
    tag: Annotated[list[str] | None, Query(description="Only documents with this tag (repeatable).")] = None,
    category: str | None = None,
) -> FastJSON:
    st = state(request)
    with st.Session() as session:  # the hot path: session and caller here, not as dependencies (fewer thread hops)
        who = resolve_caller(request, session)
        filters = Filters(tags=tuple(tag or ()), category=category or None, groups=who.search_groups)
        return FastJSON(search_view(session, st.engine.current, st.facets, q=q, k=k, mode=mode, filters=filters))


@router.get("/documents/{doc_id}", summary="A document: chunks, metadata, labels with provenance, summary")
def api_document(doc_id: str, who: Who, session: DB) -> FastJSON:
    return FastJSON(document_view(session, readable_document(session, doc_id, who.reader)))


class LabelChange(BaseModel):
    """Set or confirm labels; each is stored as a review (gold with provenance), apart from front matter."""

    category: str | None = Field(None, description="The document's category.")
    tags: list[str] | None = Field(None, description="The complete tag set (other predicted or reviewed tags are rejected).")
    add_tags: list[str] = Field([], description="Accept these tags.")
    remove_tags: list[str] = Field([], description="Reject these tags.")
    confirm: bool = Field(False, description="Accept the model's category and applied tags as they are.")


def change_labels(request: Request, session: Session, who: Caller, doc_id: str, change: LabelChange) -> list[dict]:
    doc = readable_document(session, doc_id, who.reader)  # 404 before 403: nothing about unreadable documents
    require_reviewer(who)
    verdicts = reviews.confirm_predictions(session, doc.id, who.user) if change.confirm else []
    if change.category is not None or change.tags is not None or change.add_tags or change.remove_tags:
        verdicts += reviews.set_labels(session, doc.id, who.user, category=change.category, tags=change.tags,
                                       add_tags=change.add_tags, remove_tags=change.remove_tags)
    if not verdicts:
        raise reviews.ReviewError("nothing to record: give category, tags, add_tags, remove_tags or confirm")
    session.commit()
    state(request).facets.clear()
    return [v.as_dict() for v in verdicts]


@router.post("/documents/{doc_id}/labels", summary="Record a reviewer's labels (reviewers only)")
def api_labels(request: Request, doc_id: str, change: LabelChange, who: Who,
               session: DB) -> FastJSON:
    check_csrf(who, request.headers.get(CSRF_HEADER))
    recorded = change_labels(request, session, who, doc_id, change)
    return FastJSON({"recorded": recorded,
                     "labels": document_view(session, readable_document(session, doc_id, who.reader))["labels"]})


@router.get("/review", summary="The review queue, least certain first (reviewers only)")
def api_review(who: Who, session: DB, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> FastJSON:
    require_reviewer(who)
    return FastJSON({"counts": queue_counts(session, who.search_groups), "queue": review_queue(session, who.search_groups, limit)})


@router.get("/export", summary="JSON lines: every document the caller may read, gold beside predicted labels")
def api_export(request: Request, who: Who) -> StreamingResponse:
    Session_ = state(request).Session

    def lines():
        with Session_() as session:
            for row in export_rows(session, reader=who.reader):
                yield json.dumps(row, ensure_ascii=False, default=str) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/adapters", summary="Adapter versions and the ones answering searches now")
def api_adapters(request: Request, who: Who, session: DB) -> dict:
    gen = state(request).engine.current
    return {
        "serving": gen.versions(),
        "versions": [
            {"id": v.id, "task": v.task, "kind": v.kind, "status": v.status, "backbone": v.backbone,
             "primary_metric": v.primary_metric, "metric": (v.metrics or {}).get(v.primary_metric),
             "reason": v.reason, "created_at": v.created_at.isoformat() if v.created_at else None,
             "promoted_at": v.promoted_at.isoformat() if v.promoted_at else None}
            for v in list_versions(session)
        ],
    }


@router.get("/health", summary="Liveness: the process answers")
def api_health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: models and index loaded (503 until then)")
def api_ready(request: Request):
    engine = state(request).engine
    gen = engine.current
    body = {"ready": gen.dense, "versions": gen.versions(), "swaps": engine.swaps, "last_error": engine.last_error}
    if not gen.dense:
        return JSONResponse({"error": "not ready", "detail": gen.problem or "no index loaded"} | body, status_code=503)
    return body
