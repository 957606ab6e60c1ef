"""Ingest runs and the files they could not read: a run's row, its heartbeat, and runs whose process is gone.

A run killed with -9 cannot say it stopped, so each run records its pid, host and a heartbeat, and the next
run (or `kb stats`) marks runs whose process is gone as `abandoned`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from kb_pipeline.store.schema import (
    IngestError,
    IngestRun,
    utcnow,
)

RUN_STALE_AFTER = timedelta(minutes=15)  # a run on another host with no heartbeat for this long is gone


def start_run(session: Session, paths: list[str]) -> int:
    """Record a new run (with this process's pid and host), after marking runs whose process is gone."""
    mark_abandoned_runs(session)
    now = utcnow()
    run = IngestRun(paths=paths, pid=os.getpid(), host=_HOST, heartbeat_at=now, started_at=now)
    session.add(run)
    session.flush()
    return run.id


def heartbeat(session: Session, run_id: int) -> None:
    """The run is still working (its units may run in other processes or on other hosts)."""
    session.execute(
        update(IngestRun).where(IngestRun.id == run_id, IngestRun.status == "running").values(heartbeat_at=utcnow())
    )


def mark_abandoned_runs(session: Session) -> list[int]:
    """Runs left `running` by a process that is gone (killed, crashed) become `abandoned`; returns their ids.

    Gone means: on this host, no live process has the run's pid; on another host (or for runs recorded
    before pids were), no heartbeat for RUN_STALE_AFTER. Runs still working, here or elsewhere, are left alone.
    """
    now = utcnow()
    running = session.execute(
        select(IngestRun.id, IngestRun.pid, IngestRun.host, IngestRun.heartbeat_at, IngestRun.started_at).where(
            IngestRun.status == "running"
        )
    ).all()
    gone = [row.id for row in running if run_is_gone(row.pid, row.host, row.heartbeat_at or row.started_at, now)]
    if gone:
        session.execute(
            update(IngestRun).where(IngestRun.id.in_(gone), IngestRun.status == "running").values(status="abandoned")
        )
    return gone


def run_is_gone(pid: int | None, host: str | None, last_sign: datetime | None, now: datetime) -> bool:
    if pid is not None and host == _HOST:
        return not _process_alive(pid)
    if last_sign is None:
        return True
    if last_sign.tzinfo is None:  # SQLite hands back naive datetimes (stored as UTC)
        last_sign = last_sign.replace(tzinfo=now.tzinfo)
    return now - last_sign > RUN_STALE_AFTER


def _process_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie (killed, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


_HOST = socket.gethostname()[:255]


def finish_run(session: Session, run_id: int, counts: dict[str, int], seconds: float, status: str = "ok") -> None:
    session.execute(
        update(IngestRun)
        .where(IngestRun.id == run_id)
        .values(finished_at=utcnow(), seconds=seconds, status=status, **counts)
    )


def record_errors(session: Session, run_id: int, errors: Iterable[tuple[str, str, str]]) -> None:
    rows = [dict(run_id=run_id, path=p, error_kind=k, message=m) for p, k, m in errors]
    if rows:
        session.execute(insert(IngestError), rows)


def list_errors(session: Session, run_id: int | None = None) -> list[IngestError]:
    """Errors of one run; by default those of the latest run that finished."""
    if run_id is None:
        run_id = session.scalar(
            select(IngestRun.id).where(IngestRun.finished_at.is_not(None)).order_by(IngestRun.id.desc())
        )
        if run_id is None:
            return []
    query = select(IngestError).where(IngestError.run_id == run_id).order_by(IngestError.path)
    return list(session.scalars(query))


def run_dict(run: IngestRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "seconds": round(run.seconds, 3),
        **{k: getattr(run, k) for k in ("added", "updated", "unchanged", "deleted", "skipped", "errors")},
    }
