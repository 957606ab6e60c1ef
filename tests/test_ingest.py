"""Incremental ingestion on SQLite and Postgres: what a user running `kb ingest` twice would notice."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from kb_pipeline.errors import IngestPathError
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.store import ingest_runs, repo
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
        errors = {Path(e.path).name: e for e in ingest_runs.list_errors(s)}
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
        [error] = ingest_runs.list_errors(s)
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


# --- symbolic links ------------------------------------------------------------------------------


def test_symlinks_never_leave_the_ingested_folder_and_inside_ones_are_read_once(settings, corpus, tmp_path):
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "root:x:0:0:the secret outside the corpus\n")
    write(outside / "docs" / "private.md", "# Private\n\nAlso outside the corpus.\n")
    (corpus / "passwd.txt").symlink_to(outside / "secret.txt")  # ln -s /etc/passwd folder/passwd.txt
    (corpus / "linked-folder").symlink_to(outside / "docs", target_is_directory=True)
    (corpus / "alias.md").symlink_to(corpus / "hr" / "leave-policy.md")  # inside: read once, as its target
    (corpus / "eng-again").symlink_to(corpus / "eng", target_is_directory=True)
    (corpus / "eng" / "loop").symlink_to(corpus / "eng" / "loop")
    (corpus / "broken.md").symlink_to(tmp_path / "nowhere.md")
    (corpus / "eng" / "up").symlink_to(corpus, target_is_directory=True)  # a cycle back to the root

    report = ingest(settings, [corpus])
    refused = {Path(path).name for path, _, _ in report.refused}
    assert refused == {"passwd.txt", "linked-folder", "loop", "broken.md"}
    assert report.as_dict() | {"seconds": 0} == {
        "added": 3, "updated": 0, "unchanged": 0, "deleted": 0, "skipped": 1 + 4, "errors": 0, "seconds": 0
    }
    with session_factory(settings)() as s:
        texts = " ".join(s.scalars(select(Document.text)))
        assert "secret" not in texts and "Private" not in texts
        paths = sorted(s.scalars(select(Document.path)))
        assert paths == sorted(str(corpus / p) for p in ("hr/leave-policy.md", "eng/failover.md", "eng/notes.txt"))
        recorded = {Path(e.path).name: e for e in ingest_runs.list_errors(s)}  # what `kb errors` shows, with the reason
    assert set(recorded) == refused and all(e.error_kind == "symlink" for e in recorded.values())
    assert "outside the ingested folder" in recorded["passwd.txt"].message
    assert str(outside / "secret.txt") in recorded["passwd.txt"].message
    assert "broken or looping" in recorded["loop"].message and "broken or looping" in recorded["broken.md"].message
    assert ingest(settings, [corpus]).as_dict()["unchanged"] == 3


def test_a_symlinked_sub_folder_is_ingested_under_its_real_path(settings, corpus, tmp_path):
    ingest(settings, [corpus])
    (corpus / "handbook").symlink_to(corpus / "hr", target_is_directory=True)
    report = ingest(settings, [corpus / "handbook"])  # the folder named through a link is the real one
    assert report.as_dict()["added"] == 0 and report.as_dict()["unchanged"] == 1
    assert row_counts(settings)["documents"] == 3


# --- access lists --------------------------------------------------------------------------------


@pytest.mark.parametrize("acl", ["[]", '""', "[~]", "~"])
def test_an_empty_acl_is_an_error_and_keeps_the_restricted_version(settings, corpus, acl):
    ingest(settings, [corpus])
    path = corpus / "hr" / "leave-policy.md"
    write(path, POLICY.replace("acl: [hr]", f"acl: {acl}").replace("25 days", "30 days"))
    report = ingest(settings, [corpus])
    assert report.as_dict()["errors"] == 1 and report.as_dict()["updated"] == 0
    with session_factory(settings)() as s:
        [error] = ingest_runs.list_errors(s)
        doc = repo.find_document(s, str(path))
        assert error.error_kind == "front_matter" and "'acl' names no group" in error.message
        assert doc.version == 1 and "25 days" in doc.text
        assert repo.document_labels(s, doc.id)["acl"] == ["hr"]  # still restricted, never public


def test_acl_group_names_are_normalised_like_user_groups(settings, corpus):
    from kb_pipeline.store import users

    write(corpus / "hr" / "leave-policy.md", POLICY.replace("acl: [hr]", "acl: ['Human   Resources']"))
    ingest(settings, [corpus])
    with session_factory(settings).begin() as s:
        assert users.add_user(s, "hana", ["HUMAN RESOURCES ", " "]) == ["human resources"]
        assert users.add_user(s, "ola", ["human\tresources"]) == ["human resources"]
    with session_factory(settings)() as s:
        doc = repo.find_document(s, str(corpus / "hr" / "leave-policy.md"))
        assert repo.document_labels(s, doc.id)["acl"] == ["human resources"]
        for groups in (users.user_groups(s, "hana"), ["Human  Resources"]):  # stored, or as a search passes them
            visible = set(s.scalars(select(Document.id).where(users.readable_filter(groups))))
            assert doc.id in visible
        assert doc.id not in set(s.scalars(select(Document.id).where(users.readable_filter(None))))


# --- runs ----------------------------------------------------------------------------------------


def test_runs_killed_with_sigkill_are_marked_abandoned_and_live_ones_are_not(settings, corpus):
    import signal
    import subprocess
    import sys
    from datetime import timedelta

    from kb_pipeline.store.schema import IngestRun, utcnow

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with session_factory(settings).begin() as s:
        killed = ingest_runs.start_run(s, ["killed"])
        s.execute(update_run(killed, pid=victim.pid))
        alive = ingest_runs.start_run(s, ["running concurrently in this process"])
        remote_fresh = ingest_runs.start_run(s, ["on another host, heartbeat now"])
        s.execute(update_run(remote_fresh, host="elsewhere", pid=1))
        remote_stale = ingest_runs.start_run(s, ["on another host, silent for an hour"])
        s.execute(update_run(remote_stale, host="elsewhere", heartbeat_at=utcnow() - timedelta(hours=1)))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    with session_factory(settings)() as s:  # `kb stats` shows it before anything is written
        last = repo.stats(s)["last_ingest"]
        assert last["id"] == remote_stale and last["status"] == "abandoned"
    report = ingest(settings, [corpus])  # a new run writes it down
    with session_factory(settings)() as s:
        status = dict(s.execute(select(IngestRun.id, IngestRun.status)).all())
    assert status == {killed: "abandoned", alive: "running", remote_fresh: "running", remote_stale: "abandoned",
                      report.run_id: "ok"}


def update_run(run_id: int, **values):
    from sqlalchemy import update

    from kb_pipeline.store.schema import IngestRun

    return update(IngestRun).where(IngestRun.id == run_id).values(**values)


def test_a_path_too_long_to_store_is_an_error_not_a_crash(settings, corpus):
    deep = corpus
    for i in range(5):
        deep = deep / (f"{i}" * 220)
    try:
        write(deep / "deep.md", "# Deep\n\nFar down.\n")
    except OSError:
        pytest.skip("the file system refuses paths this long")
    report = ingest(settings, [corpus])
    assert report.as_dict()["added"] == 3 and report.as_dict()["errors"] == 1
    with session_factory(settings)() as s:
        [error] = ingest_runs.list_errors(s)
    assert error.error_kind == "path_too_long" and "deep.md" in error.message
