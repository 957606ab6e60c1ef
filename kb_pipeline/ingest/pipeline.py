"""`kb ingest`: folders in, documents + chunks + gold labels out, incrementally and crash-safe.

Each batch of documents is one transaction, so a crash leaves whole documents or none; an interrupted
run is simply repeated. New documents go in with a few multi-row statements; changed ones, and new ones
that race another process for the same file, get a savepoint each. Files that fail to parse are
recorded in ingest_errors and never touch what is already stored for them. Small Markdown and text
files are parsed in this process, everything else in sandboxed worker processes.

Runs may overlap (`kb ingest C/d0 & kb ingest C`, Dask workers): sources are decided under an exclusive
database lock and documents written under a shared one (repo.lock_sources), each file is written under the
one source covering it at write time, and a unique index over active paths backs this up; a race lost
to another run is retried as an update, never a traceback.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kb_pipeline.backbone.tokenizer import chunk_tokenizer
from kb_pipeline.config import Settings
from kb_pipeline.errors import IngestPathError
from kb_pipeline.ingest.chunking import chunk_text
from kb_pipeline.ingest.front_matter import labels_from_metadata
from kb_pipeline.ingest.readers import ParsedDocument, parses_in_process
from kb_pipeline.ingest.sandbox import SandboxedReader
from kb_pipeline.ingest.sources import FileEntry, file_sha256, in_scope, is_unchanged_fast, scan, source_root_and_scope
from kb_pipeline.ingest.text_utils import ReadError
from kb_pipeline.store import ingest_runs, repo
from kb_pipeline.store.db import run_transaction, session_factory

COUNT_KEYS = ("added", "updated", "unchanged", "deleted", "skipped", "errors")

ProgressFn = Callable[[int, int, str], None]  # (done, total, current path)


@dataclass
class IngestReport:
    run_id: int
    counts: Counter = field(default_factory=Counter)
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, message)
    seconds: float = 0.0
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # links not followed (counted as skipped)

    def as_dict(self) -> dict:
        return {**{k: self.counts.get(k, 0) for k in COUNT_KEYS}, "seconds": round(self.seconds, 3)}


@dataclass
class PendingFile:
    entry: FileEntry
    known_id: int | None
    was_active: bool  # False for a new file or one that comes back after deletion


@dataclass
class IngestUnit:
    """Files of one source to parse and write: the unit of work one worker takes."""

    source_id: int  # as planned; a source absorbed meanwhile is replaced by the one above it when writing
    files: list[PendingFile]
    run_id: int = 0  # for heartbeats


@dataclass
class IngestPlan:
    """What a run has to do, decided up front: changed files in units, then tombstones."""

    run_id: int
    units: list[IngestUnit] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)  # documents whose files vanished
    counts: Counter = field(default_factory=Counter)  # skipped and unchanged, found while planning
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # symbolic links not followed, and why
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # files refused while planning
    total_files: int = 0
    started_at: float = field(default_factory=time.time)


def ingest(settings: Settings, paths: list[Path], progress: ProgressFn | None = None) -> IngestReport:
    """plan_ingest -> ingest_unit for each unit -> finish_ingest, in this process."""
    done = 0

    def step(path: str, total: int) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, path)

    plan = plan_ingest(settings, paths, on_file=step)
    with sandboxed_reader(settings) as reader:
        parts = [
            ingest_unit(settings, unit, reader=reader, on_file=lambda p: step(p, plan.total_files))
            for unit in plan.units
        ]
    return finish_ingest(settings, plan, parts)


def plan_ingest(
    settings: Settings,
    paths: list[Path],
    *,
    files_per_unit: int = 500,
    on_file: Callable[[str, int], None] | None = None,
) -> IngestPlan:
    """Start a run, scan the folders and sort files into unchanged, to (re)parse and vanished.

    Unchanged files whose mtime moved are touched here; nothing else is written.
    """
    resolved = check_paths(paths)
    Session = session_factory(settings)
    with Session.begin() as session:
        plan = IngestPlan(run_id=ingest_runs.start_run(session, [str(p) for p in resolved]))
    beat = _Heartbeat(Session, plan.run_id)
    scanned = []
    for path in resolved:
        source, scope, known = _resolve_source(Session, *source_root_and_scope(path))
        found = scan(Path(source.root), scope)
        plan.counts["skipped"] += len(found.skipped) + len(found.refused_links)
        plan.refused += found.refused_links
        plan.total_files += len(found.files)
        scanned.append((source.id, scope, found, known))
    for source_id, scope, found, known in scanned:
        pending: list[PendingFile] = []
        touched: list[tuple[int, int, float]] = []
        for entry in found.files:
            beat()
            row = known.get(entry.uri)
            if (too_long := _path_too_long(entry)) is not None:
                plan.errors.append((str(entry.path), "path_too_long", too_long))
            elif is_unchanged_fast(entry, row):
                plan.counts["unchanged"] += 1
            elif row is not None and row.status == "active" and _same_content(entry, row.sha256):
                touched.append((row.id, entry.size, entry.mtime))
                plan.counts["unchanged"] += 1
            else:
                pending.append(PendingFile(entry, row.id if row else None, row is not None and row.status == "active"))
                continue
            if on_file:
                on_file(str(entry.path), plan.total_files)
        if touched:
            with Session.begin() as session:
                for doc_id, size, mtime in touched:
                    repo.touch_document(session, doc_id, size, mtime)
        for start in range(0, len(pending), files_per_unit):
            plan.units.append(IngestUnit(source_id, pending[start : start + files_per_unit], run_id=plan.run_id))
        seen = {entry.uri for entry in found.files}
        plan.gone += [
            row.id for uri, row in known.items() if row.status == "active" and uri not in seen and in_scope(uri, scope)
        ]
    return plan


# Column widths: uri String(1024), path String(2048); Postgres also caps a btree entry (the unique index
# over active paths) at about 2.7 kB.
_MAX_URI_CHARS, _MAX_PATH_CHARS, _MAX_PATH_BYTES = 1024, 2048, 2400


def _path_too_long(entry: FileEntry) -> str | None:
    path = str(entry.path)
    if len(entry.uri) <= _MAX_URI_CHARS and len(path) <= _MAX_PATH_CHARS and len(path.encode()) <= _MAX_PATH_BYTES:
        return None
    return (
        f"{path}: path too long to store ({len(path)} characters, {len(entry.uri)} below the ingested folder; "
        f"at most {_MAX_PATH_CHARS} and {_MAX_URI_CHARS})"
    )


def _resolve_source(Session, root: Path, scope: str):
    """The source row for a path, decided under the exclusive sources lock (see repo.lock_sources)."""

    def resolve(session: Session):
        repo.lock_sources(session, exclusive=True)
        source, relative = repo.resolve_source(session, root, scope)
        return source, relative, repo.known_files(session, source.id, relative)

    return run_transaction(Session, resolve)




class _Heartbeat:
    """Record now and then (at most once a minute) that the run is alive: see ingest_runs.mark_abandoned_runs."""

    def __init__(self, Session, run_id: int, every_s: float = 60.0) -> None:
        self.Session, self.run_id, self.every_s = Session, run_id, every_s
        self.last = time.monotonic()

    def __call__(self) -> None:
        if not self.run_id or time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        with self.Session.begin() as session:
            ingest_runs.heartbeat(session, self.run_id)


def sandboxed_reader(settings: Settings) -> SandboxedReader:
    return SandboxedReader(
        max_bytes=settings.max_file_bytes,
        timeout_s=settings.parse_timeout_s,
        memory_mb=settings.parse_memory_mb,
        processes=max(1, min(2, os.cpu_count() or 1)),
    )


def ingest_unit(
    settings: Settings,
    unit: IngestUnit,
    *,
    reader: SandboxedReader | None = None,
    on_file: Callable[[str], None] | None = None,
) -> IngestReport:
    """Parse and write one unit's files (in batches of one transaction each); returns its counts and errors."""
    if reader is None:
        with sandboxed_reader(settings) as own:
            return ingest_unit(settings, unit, reader=own, on_file=on_file)
    Session = session_factory(settings)
    beat = _Heartbeat(Session, unit.run_id)
    report = IngestReport(run_id=0)
    tokenizer = None
    batch: list[tuple[PendingFile, repo.NewDocument]] = []
    by_path = {p.entry.path: p for p in unit.files}
    in_process = lambda path: parses_in_process(path, by_path[path].entry.size)  # noqa: E731
    for path, result in reader.read_many(list(by_path), in_process=in_process):
        item = by_path[path]
        beat()
        if on_file:
            on_file(str(path))
        if isinstance(result, ReadError):
            report.errors.append((str(path), result.kind, str(result)))
            continue
        if tokenizer is None:
            tokenizer = chunk_tokenizer(settings.backbone, str(settings.models_dir))
        batch.append((item, _new_document(item.entry, result, tokenizer, settings)))
        if len(batch) >= settings.batch_size:
            _write_batch(Session, unit.source_id, batch, report)
            batch = []
    if batch:
        _write_batch(Session, unit.source_id, batch, report)
    return report


def finish_ingest(settings: Settings, plan: IngestPlan, parts: list[IngestReport]) -> IngestReport:
    """Tombstone vanished files, record errors and close the run (after every unit is written)."""
    report = IngestReport(run_id=plan.run_id, counts=Counter(plan.counts), errors=list(plan.errors))
    report.refused = list(plan.refused)
    for part in parts:
        report.counts.update(part.counts)
        report.errors += part.errors
    Session = session_factory(settings)
    if plan.gone:
        with Session.begin() as session:
            report.counts["deleted"] += repo.mark_deleted(session, plan.gone)
    report.counts["errors"] = len(report.errors)
    report.seconds = time.time() - plan.started_at
    with Session.begin() as session:
        ingest_runs.record_errors(session, report.run_id, report.errors + report.refused)
        ingest_runs.finish_run(session, report.run_id, {k: report.counts.get(k, 0) for k in COUNT_KEYS}, report.seconds)
    return report


def check_paths(paths: list[Path]) -> list[Path]:
    """Absolute paths, or IngestPathError naming the first that does not exist (nothing written yet)."""
    return [_checked(Path(p)) for p in paths]


def _checked(path: Path) -> Path:
    if not path.exists():
        raise IngestPathError(f"{path}: no such file or folder")
    return path.resolve()


def _same_content(entry: FileEntry, stored_sha: str) -> bool:
    try:
        return file_sha256(entry.path) == stored_sha
    except OSError:
        return False  # let the reader report it


def _new_document(entry: FileEntry, parsed: ParsedDocument, tokenizer, settings: Settings) -> repo.NewDocument:
    labels = labels_from_metadata(parsed.metadata)
    spans = chunk_text(
        parsed.text, tokenizer, max_tokens=settings.chunk_tokens, overlap_tokens=settings.chunk_overlap
    )
    return repo.NewDocument(
        uri=entry.uri,
        path=str(entry.path),
        title=parsed.title,
        mime=parsed.mime,
        size=parsed.size,
        mtime=entry.mtime,
        sha256=parsed.sha256,
        text=parsed.text,
        metadata=parsed.metadata,
        category=labels.category,
        tags=labels.tags,
        summary=labels.summary,
        acl=labels.acl,
        chunks=[
            {
                "ordinal": s.ordinal, "text": s.text, "char_start": s.char_start, "char_end": s.char_end,
                "token_count": s.token_count,
            }
            for s in spans
        ],
    )


def _write_batch(
    Session, source_id: int, batch: list[tuple[PendingFile, repo.NewDocument]], report: IngestReport
) -> None:
    """Write one batch in one transaction, retried whole if the database reports a deadlock or is busy."""
    counts = run_transaction(Session, lambda session: _write_locked(session, source_id, batch))
    report.counts.update(counts)


def _write_locked(
    session: Session, planned_source: int, batch: list[tuple[PendingFile, repo.NewDocument]]
) -> Counter:
    """Place each document under the source that covers its file now, then insert or update it.

    Under the shared sources lock no source can appear or be absorbed until this commits, so a file's
    (source, uri) key is the same for every run that writes it, and what is stored for it is looked up
    here rather than trusted from the plan. New documents go in with a few multi-row statements
    (repo.insert_documents); if one of them races another ingest of the same file, that attempt leaves
    nothing behind and every document of the batch gets its own savepoint instead. A document another
    run stored meanwhile becomes an update (or is unchanged), never a second document.
    """
    counts: Counter = Counter()
    repo.lock_sources(session, exclusive=False)
    placed = repo.outermost_sources(session, [doc.path for _, doc in batch])
    docs: dict[int, list[repo.NewDocument]] = {}
    for _, doc in batch:
        source_id, uri = placed.get(doc.path, (planned_source, doc.uri))
        docs.setdefault(source_id, []).append(replace(doc, uri=uri))
    for source_id, group in docs.items():
        stored = repo.stored_files(session, [(source_id, doc.uri) for doc in group])
        new = [doc for doc in group if (source_id, doc.uri) not in stored]
        rest = group
        try:
            repo.insert_documents(session, source_id, new)
        except IntegrityError:
            pass  # nothing of the batch was written: one savepoint per document below sorts out the race
        else:
            counts["added"] += len(new)
            rest = [doc for doc in group if (source_id, doc.uri) in stored]
        for doc in rest:
            _write_one(session, source_id, doc, stored.get((source_id, doc.uri)), counts)
    return counts


def _write_one(
    session: Session, source_id: int, doc: repo.NewDocument, row: repo.StoredFile | None, counts: Counter
) -> None:
    if row is not None and row.status == "active" and row.sha256 == doc.sha256:
        counts["unchanged"] += 1  # another run stored this very content meanwhile
        if row.size != doc.size or abs(row.mtime - doc.mtime) > 1e-6:
            repo.touch_document(session, row.id, doc.size, doc.mtime)
        return
    try:
        repo.write_document(session, source_id, doc, row.id if row else None)
        counts["updated" if row is not None and row.status == "active" else "added"] += 1
    except IntegrityError as exc:
        _write_after_race(session, source_id, doc, counts, exc)


def _write_after_race(
    session: Session, source_id: int, doc: repo.NewDocument, counts: Counter, exc: IntegrityError
) -> None:
    """The file was stored by another run after we looked: update that document (or leave it, if equal)."""
    row = repo.stored_file_for(session, source_id, doc.uri, doc.path)
    if row is None:
        raise exc
    if row.sha256 == doc.sha256 and row.status == "active":
        counts["unchanged"] += 1
        return
    repo.write_document(session, source_id, doc, row.id)
    counts["updated" if row.status == "active" else "added"] += 1
