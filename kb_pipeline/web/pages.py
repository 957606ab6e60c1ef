"""The HTML pages: search, document, review queue, sign-in/out and the API reference.

Rendered on the server by Jinja2 with autoescaping, from the same view functions as the API; no script
runs in them (the Content-Security-Policy forbids inline script), forms post back and redirect (303).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from kb_pipeline.errors import ReviewError
from kb_pipeline.review import queue_counts, review_queue
from kb_pipeline.search.hybrid import MODES, Filters
from kb_pipeline.web.api import LabelChange, change_labels, require_reviewer
from kb_pipeline.web.auth import (
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    AuthError,
    Caller,
    caller_for,
    check_csrf,
    check_signin_csrf,
    cookie_options,
    signin_csrf,
)
from kb_pipeline.web.deps import DB, Who, state
from kb_pipeline.web.views import document_view, highlight, readable_document, search_view, tag_rows

HERE = Path(__file__).parent
environment = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
templates = Jinja2Templates(env=environment)
router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, who: Caller | None, status: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"who": who, **context}, status_code=status)


def local_path(target: str | None, default: str = "/") -> str:
    """Only a path on this site may be a redirect target ('//evil.example' and 'javascript:' are not)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def search_url(**params) -> str:
    return "/?" + urlencode([(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])
                             if v not in (None, "")])


@router.get("/", response_class=HTMLResponse)
def search_page(
    request: Request,
    who: Who,
    session: DB,
    q: str = "",
    mode: str = "hybrid",
    tag: Annotated[list[str] | None, Query()] = None,
    category: str | None = None,
    page: Annotated[int, Query(ge=1, le=10)] = 1,
):
    st = state(request)
    tag = list(tag or ())
    mode = mode if mode in MODES else "hybrid"
    size = st.web.page_size
    filters = Filters(tags=tuple(tag), category=category or None, groups=who.search_groups)
    view = search_view(session, st.engine.current, st.facets, q=q, k=size * page, mode=mode, filters=filters)
    results = view["results"]
    for r in results:
        r["parts"] = highlight(r["snippet"], q)
    here = {"q": q, "mode": mode, "tag": list(tag), "category": category}
    links = {
        "tags": [(f["value"], f["count"], search_url(**(here | {"tag": [*tag, f["value"]]})))
                 for f in view["facets"]["tags"] if f["value"] not in tag][:30],
        "categories": [(f["value"], f["count"], search_url(**(here | {"category": f["value"]})))
                       for f in view["facets"]["categories"] if f["value"] != category],
        "drop_tags": [(t, search_url(**(here | {"tag": [x for x in tag if x != t]}))) for t in tag],
        "drop_category": search_url(**(here | {"category": None})) if category else None,
        "more": search_url(**(here | {"page": page + 1})) if len(results) == size * page and page < 10 else None,
    }
    return render(request, "search.html", who, view=view, results=results, links=links, here=here, modes=MODES)


@router.get("/documents/{doc_id}", response_class=HTMLResponse)
def document_page(request: Request, doc_id: str, who: Who, session: DB):
    doc = document_view(session, readable_document(session, doc_id, who.reader))
    categories = [f["value"] for f in state(request).facets.get(session, Filters(groups=who.search_groups))["categories"]]
    return render(request, "document.html", who, doc=doc, tags=tag_rows(doc["labels"]), categories=categories, csrf=who.csrf)


@router.post("/documents/{doc_id}/labels")
def labels_form(
    request: Request,
    doc_id: str,
    who: Who,
    session: DB,
    action: Annotated[str, Form()],
    tag: Annotated[str, Form()] = "",
    category: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
):
    check_csrf(who, csrf_token)
    if who.via != "cookie":  # a form is the pages' way; API clients post JSON to /api
        raise AuthError("sign in to review labels")
    change = {
        "accept_tag": LabelChange(add_tags=[tag]),
        "reject_tag": LabelChange(remove_tags=[tag]),
        "category": LabelChange(category=category),
        "confirm": LabelChange(confirm=True),
    }.get(action)
    if change is None:
        raise ReviewError(f"unknown action {action!r}")
    change_labels(request, session, who, doc_id, change)
    return RedirectResponse(local_path(next, f"/documents/{doc_id}"), status_code=303)


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request, who: Who, session: DB, limit: Annotated[int, Query(ge=1, le=200)] = 20):
    require_reviewer(who)
    queue = review_queue(session, who.search_groups, limit)
    counts = queue_counts(session, who.search_groups)
    categories = [f["value"] for f in state(request).facets.get(session, Filters(groups=who.search_groups))["categories"]]
    return render(request, "review.html", who, queue=queue, counts=counts, categories=categories, csrf=who.csrf)


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, next: str = "/", error: str = ""):
    token = signin_csrf(request)
    response = render(request, "signin.html", None, csrf=token, next=local_path(next), error=error)
    response.set_cookie(SIGNIN_COOKIE, token, **cookie_options(request))
    return response


@router.post("/signin")
def signin(request: Request, session: DB, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/",
           csrf_token: Annotated[str, Form()] = ""):
    check_signin_csrf(request, csrf_token)
    from kb_pipeline.store.tokens import user_for_token

    if user_for_token(session, token.strip(), touch=True) is None:
        return render(request, "signin.html", None, status=401, csrf=signin_csrf(request), next=local_path(next),
                      error="That token is unknown or revoked.")
    session.commit()
    response = RedirectResponse(local_path(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, token.strip(), **cookie_options(request))
    response.delete_cookie(SIGNIN_COOKIE, path="/")
    return response


@router.post("/signout")
def signout(request: Request, session: DB, csrf_token: Annotated[str, Form()] = ""):
    try:
        who = caller_for(request, session, ())
    except AuthError:
        who = None  # a revoked session: signing out just clears the cookie
    if who is not None:
        check_csrf(who, csrf_token)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request, who: Who):
    spec = request.app.openapi()
    operations = [(method.upper(), path, op) for path, item in spec["paths"].items() for method, op in item.items()]
    return render(request, "docs.html", who, operations=operations, info=spec["info"])


@router.get("/openapi.json")
def openapi_json(request: Request, who: Who):
    return JSONResponse(request.app.openapi())
