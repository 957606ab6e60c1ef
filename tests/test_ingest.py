"""Incremental ingestion on SQLite and Postgres: what a user running `kb ingest` twice would notice."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from kb_pipeline.ingest.pipeline import IngestPathError, ingest
from kb_pipeline.store import repo
from kb_pipeline.store.db import get_engine, session_factory
from kb_pipeline.store.schema import Chunk, Document, DocumentAcl, GoldLabel, GoldTag, IngestError, Source

POLICY = """---
title: Leave Policy
category: hr
tags: [policy, leave]
summary: How annual leave is requested and approved.
acl: [hr]
owner: People Team
---
# Leave Policy

Employees accrue 25 days of annual leave per year. Requests go through the HR portal.

## Approval

Managers approve requests within five working days. Unused leave carries over up to five days.
"""

RUNBOOK = """# Database Failover Runbook

When the primary database stops answering, page the on-call engineer.

## Steps

Promote the replica, update the connection string, and verify writes succeed.
"""


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    write(root / "hr" / "leave-policy.md", POLICY)
    write(root / "eng" / "failover.md", RUNBOOK)
    write(root / "eng" / "notes.txt", "Standup notes\n\nWe shipped the billing fix. Next: search latency.\n")
    write(root / "eng" / "diagram.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    write(root / ".git" / "config", "[core]\n")
    return root


def row_counts(settings) -> dict[str, int]:
    with session_factory(settings)() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t))
                for t in (Source, Document, Chunk, GoldLabel, GoldTag, DocumentAcl)}


def test_first_ingest_stores_documents_chunks_and_labels(settings, corpus):
    report = ingest(settings, [corpus])
    assert report.as_dict() | {"seconds": 0} == {
        "added": 3, "updated": 0, "unchanged": 0, "deleted": 0, "skipped": 1, "errors": 0, "seconds": 0
    }
    with session_factory(settings)() as s:
        doc = repo.find_document(s, str(corpus / "hr" / "leave-policy.md"))
        assert doc.title == "Leave Policy" and doc.mime == "text/markdown" and doc.version == 1
        assert doc.meta["owner"] == "People Team"
        assert repo.document_labels(s, doc.id) == {
            "category": "hr", "tags": ["leave", "policy"],
            "summary": "How annual leave is requested and approved.", "acl": ["hr"],
        }
        assert doc.chunks and all(doc.text[c.char_start:c.char_end] == c.text for c in doc.chunks)
        runbook = repo.find_document(s, "eng/failover.md")
        assert runbook.title == "Database Failover Runbook"
        assert repo.document_labels(s, runbook.id)["category"] is None


def test_second_run_writes_nothing_and_keeps_row_counts(settings, corpus):
    ingest(settings, [corpus])
    before = row_counts(settings)
    writes: list[str] = []

    def spy(conn, cursor, statement, params, context, executemany):
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in {"INSERT", "UPDATE", "DELETE"} and "ingest_runs" not in statement:
            writes.append(statement)

    engine = get_engine(settings.database_url)
    event.listen(engine, "before_cursor_execute", spy)
    try:
        report = ingest(settings, [corpus])
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert report.as_dict()["unchanged"] == 3 and report.as_dict()["added"] == 0
    assert writes == []
    assert row_counts(settings) == before


def test_changed_file_gets_new_version_and_new_chunks(settings, corpus):
    ingest(settings, [corpus])
    path = corpus / "eng" / "failover.md"
    with session_factory(settings)() as s:
        old_chunk_ids = {c.id for c in repo.find_document(s, str(path)).chunks}
    write(path, RUNBOOK + "\n## Afterwards\n\nWrite a postmortem within two days.\n")
    report = ingest(settings, [corpus])
    assert report.as_dict()["updated"] == 1 and report.as_dict()["unchanged"] == 2
    with session_factory(settings)() as s:
        doc = repo.find_document(s, str(path))
        assert doc.version == 2
        assert "postmortem" in doc.chunks[-1].text
        assert not old_chunk_ids & {c.id for c in doc.chunks}
        assert s.scalar(select(func.count()).select_from(Chunk).where(Chunk.id.in_(old_chunk_ids))) == 0


def test_touched_but_identical_file_is_unchanged(settings, corpus):
    ingest(settings, [corpus])
    path = corpus / "eng" / "notes.txt"
    os.utime(path, (1_900_000_000, 1_900_000_000))
    assert ingest(settings, [corpus]).as_dict()["unchanged"] == 3
    with session_factory(settings)() as s:
        assert repo.find_document(s, str(path)).version == 1


def test_vanished_file_becomes_a_tombstone_and_can_come_back(settings, corpus):
    ingest(settings, [corpus])
    path = corpus / "eng" / "failover.md"
    path.unlink()
    assert ingest(settings, [corpus]).as_dict()["deleted"] == 1
    with session_factory(settings)() as s:
        doc = repo.find_document(s, str(path))
        assert doc.status == "deleted" and doc.chunks == []
        assert all(d["path"] != str(path) for d in repo.document_summaries(s))
    write(path, RUNBOOK)
    assert ingest(settings, [corpus]).as_dict()["added"] == 1
    with session_factory(settings)() as s:
        assert repo.find_document(s, str(path)).status == "active"


def test_sub_folder_ingest_reuses_the_source_and_deletes_only_inside_it(settings, corpus):
    ingest(settings, [corpus / "eng"])
    ingest(settings, [corpus])  # the wider source absorbs the narrower one
    (corpus / "hr" / "leave-policy.md").unlink()
    report = ingest(settings, [corpus / "eng"])
    assert report.as_dict()["deleted"] == 0  # hr is outside this run's scope
    counts = row_counts(settings)
    assert counts["sources"] == 1 and counts["documents"] == 3


def test_bad_files_are_recorded_and_the_rest_is_ingested(settings, corpus):
    write(corpus / "junk.txt", bytes(range(256)) * 20)
    write(corpus / "latin1.txt", "caf\xe9 menu".encode("latin-1"))
    write(corpus / "empty.md", "")
    write(corpus / "broken.pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog")
    write(corpus / "bad-front-matter.md", "---\ntags: {a: 1}\n---\n# Hi\n\nText.\n")
    report = ingest(settings, [corpus])
    assert report.as_dict()["added"] == 3 and report.as_dict()["errors"] == 5
    with session_factory(settings)() as s:
        errors = {Path(e.path).name: e for e in repo.list_errors(s)}
        assert set(errors) == {"junk.txt", "latin1.txt", "empty.md", "broken.pdf", "bad-front-matter.md"}
        for name, error in errors.items():
            assert name in error.message
        assert "tags" in errors["bad-front-matter.md"].message
        assert s.scalar(select(func.count()).select_from(Document)) == 3
        assert s.scalar(select(func.count()).select_from(IngestError)) == 5


def test_a_file_that_breaks_keeps_its_previous_version(settings, corpus):
    ingest(settings, [corpus])
    path = corpus / "eng" / "notes.txt"
    write(path, b"\xff\xfe\x00garbage\x00\x00")
    report = ingest(settings, [corpus])
    assert report.as_dict()["errors"] == 1 and report.as_dict()["deleted"] == 0
    with session_factory(settings)() as s:
        doc = repo.find_document(s, str(path))
        assert doc.status == "active" and "billing fix" in doc.text


def test_oversized_file_is_refused_by_the_configured_limit(settings, corpus):
    write(corpus / "big.txt", "word " * 30_000)
    report = ingest(settings.with_(max_file_bytes=100_000), [corpus])
    with session_factory(settings)() as s:
        [error] = repo.list_errors(s)
    assert error.error_kind == "too_large" and "big.txt" in error.message
    assert report.as_dict()["added"] == 3


def test_missing_path_is_refused_before_anything_is_written(settings, tmp_path):
    with pytest.raises(IngestPathError, match="nope"):
        ingest(settings, [tmp_path / "nope"])
    assert row_counts(settings)["documents"] == 0


def stored_rows(settings, root: Path) -> dict[str, tuple]:
    """Everything stored for the documents under `root`, keyed by URI, without ids and timestamps."""
    with session_factory(settings)() as s:
        source = s.scalars(select(Source).where(Source.root == str(root))).one()
        rows = {}
        for doc in s.scalars(select(Document).where(Document.source_id == source.id)):
            rows[doc.uri] = (
                (doc.title, doc.mime, doc.size, doc.content_sha256, doc.version, doc.status, doc.meta, doc.text),
                [(c.ordinal, c.text, c.char_start, c.char_end, c.token_count) for c in doc.chunks],
                repo.document_labels(s, doc.id),
            )
        return rows


def test_bulk_insert_stores_exactly_what_per_document_writes_store(settings, corpus, tmp_path, monkeypatch):
    ingest(settings, [corpus])
    twin = tmp_path / "twin"
    shutil.copytree(corpus, twin)

    def refuse(*args, **kwargs):
        raise IntegrityError("INSERT", {}, Exception("forced: fall back to one savepoint per document"))

    monkeypatch.setattr(repo, "insert_documents", refuse)
    report = ingest(settings, [twin])
    assert report.as_dict()["added"] == 3
    assert stored_rows(settings, twin) == stored_rows(settings, corpus)


def test_a_file_stored_by_a_concurrent_ingest_meanwhile_becomes_an_update(settings, corpus):
    """Another ingest of the same folder stores a file while this run parses: the batch's bulk insert
    hits the unique (source, uri) key, leaves nothing behind, and each document is written on its own."""
    racer: list[str] = []

    def progress(done, total, path):
        if racer:
            return
        with session_factory(settings).begin() as s:
            source = s.scalars(select(Source)).one()
            doc = repo.NewDocument(
                uri="eng/failover.md", path=str(corpus / "eng" / "failover.md"), title="Old", mime="text/markdown",
                size=3, mtime=0.0, sha256="0" * 64, text="old", metadata={}, category=None, tags=(), summary=None,
                acl=(), chunks=[dict(ordinal=0, text="old", char_start=0, char_end=3, token_count=1)],
            )
            racer.append(str(repo.write_document(s, source.id, doc, None)))

    report = ingest(settings, [corpus], progress=progress)
    assert report.as_dict() | {"seconds": 0} == {
        "added": 2, "updated": 1, "unchanged": 0, "deleted": 0, "skipped": 1, "errors": 0, "seconds": 0
    }
    with session_factory(settings)() as s:
        doc = repo.find_document(s, "eng/failover.md")
        assert str(doc.id) == racer[0] and doc.version == 2 and doc.title == "Database Failover Runbook"
        assert [c.text for c in doc.chunks] != ["old"]
    assert row_counts(settings)["documents"] == 3
