"""Who may read which documents, for every command that shows them (search, show, docs, export, stats,
tag, summarise).

Two callers exist. The KB's operator (the CLI run without `--user`) owns the files and the database
and sees every document. A named user sees only documents without an ACL or with one of their groups,
and only active ones; the rule is `users.readable_filter`, the same SQL search uses, so no command can
be more generous than search. An unknown user is an error, never an anonymous fallback, and a document
a user may not read is reported exactly like a missing one, so its existence does not leak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, true
from sqlalchemy.orm import Session

from kb_pipeline.store import users
from kb_pipeline.store.schema import Document

_MAX_ID = 2**63 - 1  # larger numbers cannot be a row id (and overflow a Postgres bigint parameter)


from kb_pipeline.errors import UnknownUser  # noqa: E402,F401  (the one error type)


@dataclass(frozen=True)
class Reader:
    """The caller a command shows documents to: the operator (everything) or one user (their groups)."""

    user: str | None = None
    groups: tuple[str, ...] = ()

    @property
    def operator(self) -> bool:
        return self.user is None


OPERATOR = Reader()


def reader_for(session: Session, user: str | None) -> Reader:
    """The operator without a user name; else the user's groups (an unknown user is an error)."""
    if user is None:
        return OPERATOR
    groups = users.user_groups(session, user)
    if groups is None:
        raise UnknownUser(f"no user {user!r}: add one with `kb users add NAME --groups ...`")
    return Reader(user, tuple(groups))


def readable(reader: Reader):
    """SQL condition on Document: everything for the operator; active and permitted for a user."""
    if reader.operator:
        return true()
    return (Document.status == "active") & users.readable_filter(reader.groups)


def readable_ids(session: Session, reader: Reader) -> set[int]:
    return set(session.scalars(select(Document.id).where(readable(reader))))


def find_readable(session: Session, ref: str, reader: Reader) -> Document | None:
    """A document by id, absolute path or path within its source (as `repo.find_document`), or None
    when it is missing or the reader may not read it. The ACL is part of the query, so a readable
    document is found even when an unreadable one shares its relative path."""
    if ref.isdigit():
        if not (ref.isascii() and int(ref) <= _MAX_ID):
            return None  # '²' or 99999999999999999999: no such id
        query = select(Document).where(Document.id == int(ref))
    else:
        candidates = {ref}
        try:
            candidates.add(str(Path(ref).expanduser().resolve()))
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop: not a usable path
            pass
        query = select(Document).where(Document.path.in_(candidates) | (Document.uri == ref))
    query = query.where(readable(reader)).order_by(Document.status, Document.id)
    return session.scalars(query).first()


def not_found(ref: str) -> str:
    """The one message for a missing document and for one the reader may not read."""
    return f"no document {ref!r} (give an id from `kb docs` or a path)"
