"""API tokens: issued once, stored only as a SHA-256 hash, revocable; the web service checks them."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kb_pipeline.errors import UnknownUser
from kb_pipeline.store.schema import ApiToken, User, utcnow

TOKEN_PREFIX = "kb_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(session: Session, user: str) -> str:
    """A new random token for `user`, returned once; only its hash is stored."""
    if session.get(User, user) is None:
        raise UnknownUser(f"user {user!r} does not exist (create it with `kb users add {user} --groups ...`)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_name=user, token_hash=token_hash(token)))
    session.flush()
    return token


def revoke_tokens(session: Session, user: str) -> int:
    """Revoke every live token of `user`; returns how many were revoked."""
    if session.get(User, user) is None:
        raise UnknownUser(f"user {user!r} does not exist")
    result = session.execute(
        update(ApiToken).where(ApiToken.user_name == user, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return result.rowcount or 0


def user_for_token(session: Session, token: str, touch: bool = False) -> str | None:
    """The user a live token belongs to, or None (unknown, revoked, or its user deleted)."""
    if not token or not token.startswith(TOKEN_PREFIX):
        return None
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == token_hash(token), ApiToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    if touch:
        row.last_used_at = utcnow()
    return row.user_name
