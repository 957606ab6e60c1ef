"""Index builds: one row per FAISS file written, so readers switch to a new index in one commit."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kb_pipeline.store.schema import IndexBuild, utcnow


def start_build(session: Session, embed_key: str, kind: str, path_for: Callable[[int], str]) -> int:
    """Record a build in progress; its file is named after its id (``path_for(id)``)."""
    build = IndexBuild(embed_key=embed_key, kind=kind, path="")
    session.add(build)
    session.flush()
    build.path = path_for(build.id)
    session.flush()
    return build.id


def finish_build(session: Session, build_id: int, count: int, checksum: str, path: str) -> None:
    """Mark a build ready and every earlier ready build replaced: readers switch in one commit."""
    session.execute(update(IndexBuild).where(IndexBuild.status == "ready").values(status="replaced"))
    session.execute(
        update(IndexBuild).where(IndexBuild.id == build_id)
        .values(status="ready", count=count, checksum=checksum, path=path, finished_at=utcnow())
    )


def fail_builds(session: Session, build_ids: Sequence[int] | None = None, *, folder: str | None = None) -> int:
    """Mark builds that never finished failed: ``build_ids``, or every 'building' row under ``folder``.

    A writer holding a folder's index lock calls it with ``folder``: any build still 'building'
    there belonged to a writer that died before it could say so.
    """
    query = update(IndexBuild).where(IndexBuild.status == "building")
    if build_ids is not None:
        query = query.where(IndexBuild.id.in_(list(build_ids)))
    if folder is not None:
        query = query.where(IndexBuild.path.startswith(folder.rstrip("/") + "/", autoescape=True))
    return session.execute(query.values(status="failed", finished_at=utcnow())).rowcount


def live_build(session: Session) -> IndexBuild | None:
    return session.scalars(select(IndexBuild).where(IndexBuild.status == "ready").order_by(IndexBuild.id.desc())).first()
