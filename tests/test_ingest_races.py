"""Overlapping ingests, at once or interleaved, on SQLite and Postgres: each file is one active document.

`kb ingest C/d0 & kb ingest C` on a fresh KB used to leave two overlapping sources and two active
documents for each file of d0 (for good), or die with an IntegrityError.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text

from kb_pipeline.ingest.pipeline import finish_ingest, ingest, ingest_unit, plan_ingest
from kb_pipeline.store.db import get_engine, session_factory, upgrade
from kb_pipeline.store.schema import Chunk, Document, IngestRun, Source

FOLDERS = ("d0", "d1", "d2")


@pytest.fixture
def tree(tmp_path) -> Path:
    """C/ with three sub-folders of four Markdown files each and one file at the top."""
    root = tmp_path / "C"
    for folder in FOLDERS:
        for i in range(4):
            path = root / folder / f"note-{i}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# {folder} note {i}\n\nBody of {folder}/{i}: budgets, reviews and plans.\n")
    (root / "top.md").write_text("# Top\n\nThe top-level file.\n")
    return root


def files_under(path: Path) -> set[str]:
    return {str(p) for p in path.rglob("*.md")}


def active_paths(settings) -> Counter:
    with session_factory(settings)() as s:
        return Counter(s.scalars(select(Document.path).where(Document.status == "active")))


def assert_one_document_per_file(settings, expected: set[str]) -> None:
    paths = active_paths(settings)
    assert {p: n for p, n in paths.items() if n > 1} == {}, "a file has more than one active document"
    assert set(paths) == expected
    with session_factory(settings)() as s:
        roots = [Path(r) for r in s.scalars(select(Source.root))]
        chunked = s.scalar(
            select(func.count(func.distinct(Chunk.document_id))).join(Document).where(Document.status == "active")
        )
    assert not [(a, b) for a in roots for b in roots if a != b and b.is_relative_to(a)], "sources nest"
    assert chunked == len(expected)


def reset(settings) -> None:
    """Back to a fresh KB without re-running the migrations (sources cascade to documents and chunks)."""
    with session_factory(settings).begin() as s:
        s.execute(delete(Source))
        s.execute(delete(IngestRun))


def run_at_once(settings, paths: list[Path]) -> list[BaseException]:
    """One ingest per path, in threads released together; returns what any of them raised."""
    barrier = threading.Barrier(len(paths))
    raised: list[BaseException] = []

    def run(path: Path) -> None:
        try:
            barrier.wait(timeout=10)
            ingest(settings, [path])
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            raised.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "an ingest hung"
    return raised


def test_overlapping_ingests_at_once_leave_one_document_per_file(settings, tree):
    pairs = [
        [tree / "d0", tree],
        [tree, tree / "d0"],
        [tree / "d0", tree / "d1", tree],
        [tree / "d0", tree / "d0" / "note-1.md", tree / "d1"],
        [tree, tree],
    ]
    began = time.monotonic()
    trials = 0
    while trials < 10 or (trials < 40 and time.monotonic() - began < 4):
        paths = pairs[trials % len(pairs)]
        reset(settings)
        raised = run_at_once(settings, paths)
        assert raised == [], f"trial {trials} ({paths}): {raised!r}"
        assert_one_document_per_file(settings, set().union(*(files_under(p) for p in paths)))
        trials += 1
    report = ingest(settings, [tree])  # and a later re-ingest of the whole tree stays at one per file
    assert report.as_dict()["errors"] == 0 and report.as_dict()["updated"] == 0
    assert_one_document_per_file(settings, files_under(tree))


def test_a_run_whose_source_is_absorbed_before_it_writes_writes_under_the_covering_source(settings, tree):
    """The interleaving behind the IntegrityError traceback: `kb ingest C/d0` plans (creating source
    C/d0), `kb ingest C` absorbs that source and stores everything, then the first run writes."""
    plan = plan_ingest(settings, [tree / "d0"])
    assert ingest(settings, [tree]).as_dict()["added"] == len(files_under(tree))
    parts = [ingest_unit(settings, unit) for unit in plan.units]
    report = finish_ingest(settings, plan, parts)
    assert report.as_dict()["errors"] == 0
    assert report.as_dict()["unchanged"] == len(files_under(tree / "d0"))  # the other run stored the same files
    assert_one_document_per_file(settings, files_under(tree))


def test_a_lost_race_for_a_changed_file_becomes_an_update(settings, tree):
    """As above, but the file changed after the other run stored it: the late run's write is an update."""
    plan = plan_ingest(settings, [tree / "d0"])
    ingest(settings, [tree])
    (tree / "d0" / "note-0.md").write_text("# d0 note 0\n\nRewritten after the other run stored it.\n")
    parts = [ingest_unit(settings, unit) for unit in plan.units]
    counts = finish_ingest(settings, plan, parts).as_dict()
    assert (counts["updated"], counts["unchanged"], counts["added"], counts["errors"]) == (1, 3, 0, 0)
    assert_one_document_per_file(settings, files_under(tree))
    with session_factory(settings)() as s:
        doc = s.scalars(select(Document).where(Document.path == str(tree / "d0" / "note-0.md"))).one()
        assert doc.version == 2 and "Rewritten" in doc.text and doc.uri == "d0/note-0.md"


def test_overlapping_sources_left_by_older_versions_are_merged(settings, tree):
    """Before sources were locked, C and C/d0 could both exist, holding a document for the same file."""
    ingest(settings, [tree / "d0"])
    with session_factory(settings).begin() as s:  # what the race left: a second source C with its own copy
        outer = Source(root=str(tree))
        s.add(outer)
        s.flush()
        inner = s.scalars(select(Source).where(Source.root == str(tree / "d0"))).one()
        for doc in s.scalars(select(Document).where(Document.source_id == inner.id, Document.uri == "note-0.md")):
            s.add(Document(source_id=outer.id, uri="d0/note-0.md", path=doc.path, title="old copy", mime=doc.mime,
                           size=1, mtime=0.0, content_sha256="0" * 64, status="deleted", meta={}, text="old"))
    report = ingest(settings, [tree])
    assert report.as_dict()["errors"] == 0
    assert report.as_dict()["unchanged"] == 4  # d0's documents were adopted, not re-added
    assert_one_document_per_file(settings, files_under(tree))
    with session_factory(settings)() as s:
        assert s.scalar(select(func.count()).select_from(Source)) == 1
        assert s.scalar(select(func.count()).select_from(Document).where(Document.title == "old copy")) == 0


def test_the_database_refuses_a_second_active_document_for_a_file(settings, tree):
    ingest(settings, [tree / "d0"])
    with session_factory(settings)() as s:
        doc = s.scalars(select(Document)).first()
        other = Source(root=str(tree / "elsewhere"))
        s.add(other)
        s.flush()
        s.add(Document(source_id=other.id, uri="x.md", path=doc.path, title="t", mime=doc.mime, size=1, mtime=0.0,
                       content_sha256="0" * 64, status="active", meta={}, text="x"))
        with pytest.raises(Exception, match="(?i)unique"):
            s.flush()


def test_migration_keeps_one_active_document_per_file(backend, tree):
    """Databases the race already damaged: upgrading keeps the newest document of each file active."""
    upgrade(backend, "0004")
    engine = get_engine(backend)
    doc = ("INSERT INTO documents (id, source_id, uri, path, title, mime, size, mtime, content_sha256, version, "
           "status, metadata, text, created_at, updated_at) VALUES (:id, :source, :uri, '/c/d0/a.md', 't', "
           "'text/markdown', 1, 0, 'x', 1, 'active', '{}', 'a', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO sources (id, root, created_at) VALUES (1, '/c', CURRENT_TIMESTAMP), "
                          "(2, '/c/d0', CURRENT_TIMESTAMP)"))
        conn.execute(text(doc), [{"id": 1, "source": 2, "uri": "a.md"}, {"id": 2, "source": 1, "uri": "d0/a.md"}])
        conn.execute(text("INSERT INTO chunks (document_id, ordinal, text, char_start, char_end, token_count) "
                          "VALUES (1, 0, 'a', 0, 1, 1), (2, 0, 'a', 0, 1, 1)"))
    upgrade(backend)
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT id, status FROM documents ORDER BY id")).all()
        assert statuses == [(1, "deleted"), (2, "active")]
        assert conn.execute(text("SELECT document_id FROM chunks")).scalars().all() == [2]
