"""Who is asking: a Bearer token (API clients) or the session cookie the sign-in form sets (the pages).

The cookie holds the user's API token itself, HttpOnly and SameSite=Lax; the server keeps only its
SHA-256 (store/tokens.py), so a revoked token ends every session made with it at once, in every web
process, and no user name travels in the cookie. Anonymous callers see only documents without an ACL.

CSRF: a form that changes state carries a token the page was rendered with. For a signed-in session it
is an HMAC of the session token, so only a page that could read the session can have made it; the
sign-in form (no session yet) uses a random value that must match a cookie of the same value (double
submit). Requests authenticated by a Bearer header are not sent by browsers on their own and need none.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.orm import Session

from kb_pipeline.search.access import Reader
from kb_pipeline.store import tokens, users

SESSION_COOKIE = "kb_session"
SIGNIN_COOKIE = "kb_signin_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class AuthError(Exception):
    """401: a credential was given and is not (or no longer) valid, or sign-in is required."""

    def __init__(self, detail: str, status: int = 401) -> None:
        super().__init__(detail)
        self.detail, self.status = detail, status


@dataclass(frozen=True)
class Caller:
    user: str | None = None  # None: anonymous
    groups: tuple[str, ...] = ()
    reviewer: bool = False
    via: str = "anonymous"  # anonymous | bearer | cookie
    session_token: str | None = None  # the cookie's token (for CSRF), never shown

    @property
    def anonymous(self) -> bool:
        return self.user is None

    @property
    def search_groups(self) -> tuple[str, ...] | None:
        """Filters.groups: None is anonymous (public documents only), exactly as `kb search` without --user."""
        return None if self.anonymous else self.groups

    @property
    def reader(self) -> Reader:
        """access.Reader for this caller; never the operator (user None), who would see everything."""
        return Reader(self.user or "", self.groups)

    @property
    def csrf(self) -> str | None:
        return csrf_for(self.session_token) if self.session_token else None


ANONYMOUS = Caller()


def csrf_for(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"kb-web-csrf", hashlib.sha256).hexdigest()


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError("the Authorization header must be 'Bearer TOKEN'")
    return value.strip()


def caller_for(request: Request, session: Session, reviewer_groups: tuple[str, ...]) -> Caller:
    """The caller of this request; an unknown or revoked token is an AuthError, never an anonymous fallback."""
    token, via = bearer(request), "bearer"
    if token is None:
        token, via = request.cookies.get(SESSION_COOKIE), "cookie"
    if not token:
        return ANONYMOUS
    user = tokens.user_for_token(session, token)
    groups = users.user_groups(session, user) if user is not None else None
    if user is None or groups is None:
        raise AuthError("unknown or revoked token" if via == "bearer" else "your session ended: sign in again")
    return Caller(user, tuple(groups), bool(set(groups) & set(reviewer_groups)), via,
                  token if via == "cookie" else None)


def check_csrf(caller: Caller, submitted: str | None) -> None:
    """A state-changing request made with the session cookie must carry the page's CSRF token."""
    if caller.via != "cookie":
        return
    if not submitted or not hmac.compare_digest(submitted, caller.csrf or ""):
        raise AuthError("missing or wrong CSRF token: reload the page and try again", 403)


def signin_csrf(request: Request) -> str:
    """The sign-in form's token: the existing cookie's value, or a new one (the response must set it)."""
    return request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(24)


def check_signin_csrf(request: Request, submitted: str | None) -> None:
    cookie = request.cookies.get(SIGNIN_COOKIE)
    if not cookie or not submitted or not hmac.compare_digest(cookie, submitted):
        raise AuthError("missing or wrong CSRF token: reload the sign-in page and try again", 403)


def cookie_options(request: Request) -> dict:
    return {"httponly": True, "samesite": "lax", "secure": request.url.scheme == "https", "path": "/"}
