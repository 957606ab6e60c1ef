"""Users and their groups, and the SQL rule for which documents a user may read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from kb_pipeline.ingest.identifiers import normalise_identifiers
from kb_pipeline.store.schema import Document, DocumentAcl, User, UserGroup


def add_user(session: Session, name: str, groups: Iterable[str]) -> list[str]:
    """Create or update a user; their groups are replaced by `groups`, normalised as document ACLs are."""
    clean = sorted(normalise_identifiers(groups))
    if session.get(User, name) is None:
        session.add(User(name=name))
        session.flush()
    session.execute(delete(UserGroup).where(UserGroup.user_name == name))
    if clean:
        session.execute(insert(UserGroup), [dict(user_name=name, group_name=g) for g in clean])
    return clean


def user_groups(session: Session, name: str) -> list[str] | None:
    """The user's groups, or None when there is no such user."""
    if session.get(User, name) is None:
        return None
    return list(session.scalars(select(UserGroup.group_name).where(UserGroup.user_name == name).order_by(UserGroup.group_name)))


def list_users(session: Session) -> list[dict]:
    groups: dict[str, list[str]] = {}
    for user, group in session.execute(select(UserGroup.user_name, UserGroup.group_name).order_by(UserGroup.group_name)):
        groups.setdefault(user, []).append(group)
    return [{"name": n, "groups": groups.get(n, [])} for n in session.scalars(select(User.name).order_by(User.name))]


def readable_filter(groups: Sequence[str] | None):
    """SQL condition on Document: no ACL rows, or one of the user's groups (fail closed without a user)."""
    restricted = select(DocumentAcl.document_id).where(DocumentAcl.document_id == Document.id).exists()
    groups = normalise_identifiers(groups or ())  # stored before groups were normalised like ACLs
    if not groups:
        return ~restricted
    allowed = select(DocumentAcl.document_id).where(
        DocumentAcl.document_id == Document.id, DocumentAcl.group_name.in_(list(groups))
    ).exists()
    return ~restricted | allowed
