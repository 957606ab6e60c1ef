"""Assembles the web app: routes, static files, security headers, and errors as JSON (API) or a page.

Errors never carry a traceback: API errors are {"error": ..., "detail": ...} with their status; pages
show the same text in the site's layout. A restricted document is reported exactly as a missing one.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb_pipeline.config import Settings
from kb_pipeline.errors import KBError
from kb_pipeline.store.db import session_factory
from kb_pipeline.web import api, pages
from kb_pipeline.web.auth import AuthError
from kb_pipeline.web.deps import LoginRequired, WebState
from kb_pipeline.web.engine import SearchEngine
from kb_pipeline.web.settings import WebSettings
from kb_pipeline.web.views import FacetCache, NotFound, Unavailable

log = logging.getLogger("kb_pipeline.web")

# No inline script or style anywhere, nothing from another origin, never framed.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every HTTP response (pages, API, static files, errors)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings | None = None, *, web: WebSettings | None = None, engine: SearchEngine | None = None,
               backbone_loader=None) -> FastAPI:
    """The app for `settings`; loads the searcher now (unless given one) and watches for new models and indexes."""
    settings = settings or Settings.from_env()
    web = web or WebSettings.from_env()
    if engine is None:
        engine = SearchEngine(settings, backbone_loader, poll_s=web.poll_s).start()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        engine.stop()

    app = FastAPI(title="kb-pipeline", summary="Search and review the knowledge base", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # /docs and /openapi.json: pages.py, no CDN
    app.state.kb = WebState(settings, web, engine, session_factory(settings), FacetCache())
    app.mount("/static", StaticFiles(directory=pages.HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_middleware(SecurityHeaders)
    _error_handlers(app)
    return app


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/openapi.json"


def error_response(request: Request, status: int, error: str, detail: str) -> Response:
    if _is_api(request):
        return JSONResponse({"error": error, "detail": detail}, status_code=status)
    try:
        return pages.render(request, "error.html", None, status=status, error=error, detail=detail)
    except Exception:  # noqa: BLE001  (a broken template must not hide the error itself)
        return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError):
        if exc.status == 401 and not _is_api(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            response = RedirectResponse("/signin?" + _query(next=target, error=exc.detail), status_code=303)
            response.delete_cookie("kb_session", path="/")
            return response
        error = "unauthorized" if exc.status == 401 else "forbidden"
        response = error_response(request, exc.status, error, exc.detail)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired):
        return await auth_error(request, AuthError("sign in to use this knowledge base"))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        return error_response(request, 404, "not found", str(exc))

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable):
        return error_response(request, 503, "unavailable", str(exc))

    @app.exception_handler(KBError)
    async def kb_error(request: Request, exc: KBError):
        return error_response(request, 400, "bad request", exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error_response(request, 422, "invalid request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        error = {404: "not found", 405: "method not allowed"}.get(exc.status_code, "error")
        return error_response(request, exc.status_code, error, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("kb web: %s %s failed", request.method, request.url.path)
        return error_response(request, 500, "internal error", f"{type(exc).__name__}; the server log has the details")


def _query(**params: str) -> str:
    from urllib.parse import urlencode

    return urlencode(params)
