"""The index holds the database's vectors, not just its ids (issue 10, defect 1), and survives failed saves.

Chunk ids are never reused (AUTOINCREMENT on SQLite, migration 0004), the sync compares (id, vector
fingerprint) pairs, the live file must be the one its build recorded, and a save that fails on a full
disk leaves the previous build live. SQLite and Postgres.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import MetaData, delete, func, insert, select, text, update
from typer.testing import CliRunner

from kb_pipeline.enrich.shared_pass import enrich, load_task_models
from kb_pipeline.indexing import sync, vector_index
from kb_pipeline.indexing.errors import IndexWriteError
from kb_pipeline.indexing.vector_index import IndexConfig, VectorIndex
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.store import index_builds, outputs
from kb_pipeline.store.db import alembic_config, dispose_engines, get_engine, session_factory, upgrade
from kb_pipeline.store.schema import Chunk, ChunkEmbedding, Document, DocumentAcl, GoldLabel, IndexBuild, Source
from tiny_models import single_threaded, tiny_bert_backbone

TOPICS = ["parental leave", "laptop refresh", "incident review", "salary bands"]


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.fixture(scope="module")
def backbone():
    return tiny_bert_backbone()


def write_doc(root: Path, i: int, topic: str, *, acl: str = "") -> Path:
    body = " ".join(f"The {topic} rule number {j} applies to team {i}." for j in range(12))
    front = f"---\ntitle: {topic.title()} {i}\n{acl}---\n"
    path = root / f"doc-{i}.md"
    path.write_text(f"{front}# {topic.title()}\n\n{body}\n")
    return path


def four_docs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, topic in enumerate(TOPICS):  # the newest (highest ids) is restricted
        write_doc(root, i, topic, acl="acl: [hr]\n" if i == 3 else "")
    return root


def settings_session(settings):
    return session_factory(settings)()


def stored(settings, embed_key: str) -> tuple[np.ndarray, np.ndarray]:
    with settings_session(settings) as s:
        return outputs.load_embeddings(s, embed_key)


def chunk_ids_of(settings, name: str) -> list[int]:
    with settings_session(settings) as s:
        query = select(Chunk.id).join(Document).where(Document.uri == name, Document.status == "active")
        return sorted(s.scalars(query))


def assert_index_holds_the_stored_vectors(settings, embed_key: str) -> VectorIndex:
    ids, vectors = stored(settings, embed_key)
    index = sync.load_live_index(settings, embed_key)
    assert np.array_equal(index.ids(), ids)
    np.testing.assert_array_equal(index.vectors(ids), vectors)
    check = sync.check_index(settings, embed_key)
    assert check["ok"] and check["stale"] == 0, check
    return index


@pytest.mark.parametrize("change", ["delete newest, add a file", "edit newest"])
def test_new_chunks_never_take_over_a_removed_chunks_id_or_vector(settings, tmp_path, backbone, change):
    corpus = four_docs(tmp_path / "c")
    ingest(settings, [corpus])
    models = load_task_models(settings, backbone)
    enrich(settings, models=models)
    old_ids = chunk_ids_of(settings, "doc-3.md")
    old_vectors = dict(zip(*stored(settings, models.embed_key)))
    max_before = max(max(chunk_ids_of(settings, f"doc-{i}.md")) for i in range(4))
    assert old_ids[-1] == max_before  # setup: the restricted document holds the newest chunks

    if change == "edit newest":
        write_doc(corpus, 3, "holiday rota", acl="acl: [hr]\n")
        ingest(settings, [corpus])
        new_ids = chunk_ids_of(settings, "doc-3.md")
    else:
        (corpus / "doc-3.md").unlink()
        ingest(settings, [corpus])
        write_doc(corpus, 4, "office plants")  # public
        ingest(settings, [corpus])
        new_ids = chunk_ids_of(settings, "doc-4.md")
    report = enrich(settings, models=models)

    assert min(new_ids) > max_before, "a new chunk reused a removed chunk's id"
    assert report.index["action"] == "repaired"
    index = assert_index_holds_the_stored_vectors(settings, models.embed_key)
    # What the issue saw: the removed text's vector answering for whatever now has its id.
    for chunk_id in old_ids:
        scores, found = index.search(old_vectors[chunk_id], 1)
        assert found[0, 0] not in new_ids or scores[0, 0] < 0.999


def test_a_changed_vector_under_the_same_id_is_reported_and_replaced(settings, tmp_path, backbone):
    ingest(settings, [four_docs(tmp_path / "c")])
    models = load_task_models(settings, backbone)
    enrich(settings, models=models)
    ids, vectors = stored(settings, models.embed_key)
    victim = int(ids[1])
    replacement = np.roll(vectors[1], 1).astype("<f4")  # another unit vector, same id
    with settings_session(settings) as s, s.begin():
        s.execute(update(ChunkEmbedding).where(ChunkEmbedding.chunk_id == victim).values(vector=replacement.tobytes()))

    check = sync.check_index(settings, models.embed_key)
    assert not check["ok"] and (check["stale"], check["missing"], check["extra"]) == (1, 0, 0)
    assert "stale" in check["problem"]
    report = sync.sync_index(settings, models.embed_key)
    assert (report["action"], report["stale"], report["added"], report["removed"]) == ("repaired", 1, 0, 0)
    index = assert_index_holds_the_stored_vectors(settings, models.embed_key)
    np.testing.assert_array_equal(index.vectors([victim])[0], replacement)
    assert sync.sync_index(settings, models.embed_key)["action"] == "unchanged"


def test_an_ivf_index_is_saved_checked_and_repaired_like_a_flat_one(settings, tmp_path, backbone):
    ingest(settings, [four_docs(tmp_path / "c")])
    models = load_task_models(settings, backbone)
    enrich(settings, models=models)
    config = IndexConfig(kind="ivf", ivf_min_points=1)  # a few cells even for this tiny KB
    assert sync.sync_index(settings, models.embed_key, rebuild=True, config=config)["kind"] == "ivf"
    ids, vectors = stored(settings, models.embed_key)
    victim = int(ids[2])
    replacement = np.roll(vectors[2], 3).astype("<f4")
    with settings_session(settings) as s, s.begin():
        s.execute(update(ChunkEmbedding).where(ChunkEmbedding.chunk_id == victim).values(vector=replacement.tobytes()))
    sync._LOADED.clear()  # read the IVF file back, as another process would
    report = sync.sync_index(settings, models.embed_key)
    assert (report["action"], report["kind"], report["stale"]) == ("repaired", "ivf", 1)
    index = assert_index_holds_the_stored_vectors(settings, models.embed_key)  # check_index re-reads the file
    assert index.kind == "ivf" and index.search(replacement, 1)[1][0, 0] == victim


def test_an_index_file_replaced_behind_the_kbs_back_is_detected_and_rebuilt(settings, tmp_path, backbone):
    ingest(settings, [four_docs(tmp_path / "c")])
    models = load_task_models(settings, backbone)
    enrich(settings, models=models)
    first = sync.load_live_index(settings, models.embed_key)  # loaded (and kept) by this process
    with settings_session(settings) as s:
        live = index_builds.live_build(s)
        path, checksum = Path(live.path), live.checksum
    assert hashlib.sha256(path.read_bytes()).hexdigest() == checksum

    # Same ids, other vectors, and a sidecar that agrees with the file: only the recorded checksum can tell.
    rng = np.random.default_rng(0)
    forged = VectorIndex.build(first.ids(), rng.standard_normal((len(first), first.dim)).astype(np.float32))
    forged.save(path, {"embed_key": models.embed_key, "build": live.id})

    check = sync.check_index(settings, models.embed_key)
    assert not check["ok"] and "recorded for this build" in check["problem"] and str(path) in check["problem"]
    rebuilt = sync.load_live_index(settings, models.embed_key)
    assert rebuilt is not first
    assert_index_holds_the_stored_vectors(settings, models.embed_key)
    with settings_session(settings) as s:
        assert index_builds.live_build(s).id != live.id


def test_an_index_written_before_fingerprints_is_rebuilt(settings, tmp_path, backbone):
    ingest(settings, [four_docs(tmp_path / "c")])
    models = load_task_models(settings, backbone)
    enrich(settings, models=models)
    with settings_session(settings) as s:
        live = index_builds.live_build(s)
    sidecar_path = Path(live.path).with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text())
    for key in ("fingerprint", "fingerprints"):
        del sidecar[key]
    sidecar["format"] = 1
    sidecar_path.write_text(json.dumps(sidecar))
    sync._LOADED.clear()  # as a fresh process after the upgrade

    assert "predates vector fingerprints" in sync.check_index(settings, models.embed_key)["problem"]
    report = sync.sync_index(settings, models.embed_key)
    assert report["action"] == "built" and "predates" in report["problem"]
    assert_index_holds_the_stored_vectors(settings, models.embed_key)


def full_disk_writer(real_write):
    """Write half the bytes, then fail as a full disk does."""

    def write(path, data):
        real_write(path, bytes(memoryview(data))[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def assert_previous_build_still_live(settings, folder: Path, live_before) -> None:
    with settings_session(settings) as s:
        live = index_builds.live_build(s)
        statuses = dict(s.execute(select(IndexBuild.id, IndexBuild.status)).all())
    assert (live.id, live.path, live.checksum) == (live_before.id, live_before.path, live_before.checksum)
    assert hashlib.sha256(Path(live.path).read_bytes()).hexdigest() == live.checksum  # file intact
    assert "building" not in statuses.values() and statuses[max(statuses)] == "failed"
    assert sorted(p.name for p in folder.iterdir() if p.name != ".lock") == sorted(
        [Path(live.path).name, Path(live.path).with_suffix(".json").name])  # no temp or half-written files


def test_a_full_disk_while_saving_keeps_the_previous_index_live(settings, tmp_path, backbone, monkeypatch):
    corpus = four_docs(tmp_path / "c")
    ingest(settings, [corpus])
    models = load_task_models(settings, backbone)
    enrich(settings, models=models)
    with settings_session(settings) as s:
        live_before = index_builds.live_build(s)
    write_doc(corpus, 4, "office plants")
    ingest(settings, [corpus])

    monkeypatch.setattr(vector_index, "_write_file", full_disk_writer(vector_index._write_file))
    with pytest.raises(IndexWriteError) as caught:
        enrich(settings, models=models)
    message = str(caught.value)
    assert str(settings.index_dir) in message and "No space left on device" in message and "\n" not in message
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC  # flows retry I/O errors
    assert_previous_build_still_live(settings, settings.index_dir, live_before)

    monkeypatch.undo()
    assert sync.sync_index(settings, models.embed_key)["action"] == "repaired"
    assert_index_holds_the_stored_vectors(settings, models.embed_key)


def test_kb_index_rebuild_on_a_full_disk_is_one_clear_line(settings, tmp_path, backbone, monkeypatch):
    from kb_pipeline.cli import app
    from kb_pipeline.enrich import shared_pass as enrich_module

    ingest(settings, [four_docs(tmp_path / "c")])
    models = load_task_models(settings, backbone)
    enrich(settings, models=models)
    with settings_session(settings) as s:
        live_before = index_builds.live_build(s)
    monkeypatch.setattr(enrich_module, "current_embed_key", lambda s: models.embed_key)
    monkeypatch.setattr(vector_index, "_write_file", full_disk_writer(vector_index._write_file))
    result = CliRunner().invoke(app, ["index", "rebuild"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output  # handled, not a crash
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "index" in lines[0], result.output
    assert_previous_build_still_live(settings, settings.index_dir, live_before)


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def test_a_really_full_disk_keeps_the_previous_index_live(kb_home, tmp_path, backbone):
    """The same on a real full filesystem (a small tmpfs; skipped where mounting is not allowed)."""
    from kb_pipeline.config import Settings

    settings = Settings.from_env()
    upgrade(settings.database_url)
    if not _mount_tmpfs(settings.index_dir, "512k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        corpus = four_docs(tmp_path / "c")
        ingest(settings, [corpus])
        models = load_task_models(settings, backbone)
        enrich(settings, models=models)
        with settings_session(settings) as s:
            live_before = index_builds.live_build(s)
        free = os.statvfs(settings.index_dir)
        (settings.index_dir / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize))  # nothing left
        write_doc(corpus, 4, "office plants")
        ingest(settings, [corpus])
        with pytest.raises(IndexWriteError, match="No space left on device"):
            enrich(settings, models=models)
        (settings.index_dir / "filler").unlink()
        assert_previous_build_still_live(settings, settings.index_dir, live_before)
        assert sync.sync_index(settings, models.embed_key)["action"] == "repaired"
        assert_index_holds_the_stored_vectors(settings, models.embed_key)
    finally:
        dispose_engines()
        subprocess.run(["umount", str(settings.index_dir)], capture_output=True, timeout=10)


def test_upgrading_a_filled_database_to_0004_keeps_rows_and_ids_and_never_reuses_them(backend):
    """0003 -> 0004 on a database with data: rows and ids kept, children not cascaded away, FTS works."""
    from alembic import command

    upgrade(backend, "0003")
    engine = get_engine(backend)
    meta = MetaData()  # the tables as 0003 made them (the models may have moved on since)
    meta.reflect(engine, only=[t.__tablename__ for t in (Source, Document, Chunk, ChunkEmbedding, GoldLabel,
                                                          DocumentAcl, IndexBuild)])
    tables = {t: meta.tables[t.__tablename__] for t in (Source, Document, Chunk, ChunkEmbedding, GoldLabel,
                                                        DocumentAcl, IndexBuild)}
    now = datetime(2026, 11, 30, tzinfo=UTC)
    with engine.begin() as c:
        source = c.execute(insert(tables[Source]).values(root="/r", created_at=now).returning(text("id"))).scalar()
        chunk_ids = []
        for d in range(3):
            doc = c.execute(insert(tables[Document]).values(
                source_id=source, uri=f"d{d}.md", path=f"/r/d{d}.md", title=f"Doc {d}", mime="text/markdown", size=1,
                mtime=1.0, content_sha256="x", version=1, status="active", metadata={}, text="t",
                created_at=now, updated_at=now).returning(text("id"))).scalar()
            c.execute(insert(tables[GoldLabel]).values(document_id=doc, category="hr", summary="s"))
            c.execute(insert(tables[DocumentAcl]).values(document_id=doc, group_name="hr"))
            for o in range(2):
                chunk = c.execute(insert(tables[Chunk]).values(
                    document_id=doc, ordinal=o, text=f"zeppelin hangar {d} {o}", char_start=0, char_end=1,
                    token_count=1).returning(text("id"))).scalar()
                chunk_ids.append(chunk)
                c.execute(insert(tables[ChunkEmbedding]).values(
                    chunk_id=chunk, embed_key="k", document_version=1, dim=1, vector=b"\0\0\x80?", created_at=now))
        c.execute(insert(tables[IndexBuild]).values(embed_key="k", kind="flat", path="/i", count=6, checksum="c",
                                                    status="ready", created_at=now))
        c.execute(delete(tables[Chunk]).where(tables[Chunk].c.id == chunk_ids[-1]))  # the newest chunk goes
    before = {name: _rows(engine, t) for name, t in tables.items()}

    upgrade(backend, "0004")
    assert {name: _rows(engine, t) for name, t in tables.items()} == before  # every row, every id
    with engine.begin() as c:
        assert sorted(_keyword(c, "zeppelin")) == sorted(chunk_ids[:-1])
        doc = before[Document][-1][0]
        new = c.execute(insert(tables[Chunk]).values(document_id=doc, ordinal=7, text="blimp mooring", char_start=0,
                                                     char_end=1, token_count=1).returning(text("id"))).scalar()
        assert new > max(chunk_ids[:-1]) and _keyword(c, "blimp") == [new]
        c.execute(delete(tables[Chunk]).where(tables[Chunk].c.id == new))
        again = c.execute(insert(tables[Chunk]).values(document_id=doc, ordinal=7, text="blimp mooring", char_start=0,
                                                       char_end=1, token_count=1).returning(text("id"))).scalar()
        assert again > new, "a deleted chunk's id was handed out again"
        c.execute(delete(tables[Document]).where(tables[Document].c.id == before[Document][0][0]))  # still cascades
        left = c.execute(select(func.count()).select_from(tables[ChunkEmbedding])).scalar()
        assert left == len(chunk_ids) - 1 - 2
    upgrade(backend)  # and on to head; the models agree with the migrations there
    command.check(alembic_config(backend))


def _rows(engine, table) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(select(table).order_by(*table.primary_key.columns))]


def _keyword(conn, word: str) -> list[int]:
    if conn.dialect.name == "sqlite":
        return [r[0] for r in conn.execute(text("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH :w"), {"w": word})]
    query = text("SELECT id FROM chunks WHERE to_tsvector('english', text) @@ plainto_tsquery('english', :w)")
    return [r[0] for r in conn.execute(query, {"w": word})]
