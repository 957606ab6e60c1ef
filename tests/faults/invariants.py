"""What "the KB is consistent" means, as one checker the fault tests and benchmarks/faults.py share.

`violations(settings)` returns a list of human-readable problems (empty = consistent). It never
repairs anything: in particular it reads the live index file directly instead of through
`load_live_index`, which would sync (and so hide) a stale index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import func, select, text

from kb_pipeline.config import Settings
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.schema import AdapterVersion, Chunk, ChunkEmbedding, Document, IndexBuild

QUERIES = ("budget procedure", "holiday rota", "incident report for the laptop", "zeppelin hangar", "privacy")


def violations(settings: Settings, *, index: bool = True, reference: dict | None = None, backbone=None) -> list[str]:
    """Every broken invariant of the KB at `settings`.

    index: also check the live FAISS index against the DB (skip right after an ingest, before enrich).
    reference: a `snapshot()` of a clean build of the same files; documents, chunks and search must match.
    backbone: the loaded backbone (saves reloading it per call).
    """
    problems: list[str] = []
    Session = session_factory(settings)
    with Session() as session:
        problems += _storage_integrity(session, settings)
        problems += _documents(session)
        problems += _adapters(session, settings)
        if index:
            problems += _index(session, settings, backbone)
    if reference is not None and not problems:
        problems += compare(snapshot(settings, index=index, backbone=backbone), reference)
    return problems


def _storage_integrity(session, settings: Settings) -> list[str]:
    if settings.is_sqlite:
        problems = []
        result = [r[0] for r in session.execute(text("PRAGMA integrity_check"))]
        if result != ["ok"]:
            problems.append(f"PRAGMA integrity_check: {result[:5]}")
        try:  # external-content FTS5: rank=1 also compares the index with the chunks table
            session.execute(text("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)"))
            session.rollback()
        except Exception as exc:  # the statement raises SQLITE_CORRUPT_VTAB when they differ
            session.rollback()
            problems.append(f"FTS5 integrity-check failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
        return problems
    # Postgres: its own crash safety covers the heap; check what we rely on exists and is valid.
    bad = session.execute(text(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE NOT i.indisvalid OR NOT i.indisready")).scalars().all()
    problems = [f"invalid Postgres indexes: {bad}"] if bad else []
    if not session.execute(text("SELECT 1 FROM pg_indexes WHERE indexname = 'ix_chunks_fts_tsv'")).first():
        problems.append("the full-text index ix_chunks_fts_tsv (migration 0008) is missing")
    return problems


def _documents(session) -> list[str]:
    problems = []
    dupes = session.execute(
        select(Document.path, func.count()).where(Document.status == "active")
        .group_by(Document.path).having(func.count() > 1)
    ).all()
    if dupes:
        problems.append(f"{len(dupes)} files have several active documents, e.g. {dupes[0][0]} x{dupes[0][1]}")
    no_chunks = session.scalar(
        select(func.count()).select_from(Document)
        .where(Document.status == "active", Document.text != "", ~select(Chunk.id).where(Chunk.document_id == Document.id).exists())
    )
    if no_chunks:
        problems.append(f"{no_chunks} active documents with text have no chunks (half-written document)")
    dead_chunks = session.scalar(
        select(func.count()).select_from(Chunk).join(Document).where(Document.status != "active")
    )
    if dead_chunks:
        problems.append(f"{dead_chunks} chunks still belong to deleted documents")
    orphans = session.scalar(
        select(func.count()).select_from(ChunkEmbedding)
        .where(~select(Chunk.id).where(Chunk.id == ChunkEmbedding.chunk_id).exists())
    )
    if orphans:
        problems.append(f"{orphans} embeddings of chunks that no longer exist")
    return problems


def _adapters(session, settings: Settings) -> list[str]:
    from kb_pipeline.backbone.adapter_files import ADAPTER_FILE, META_FILE

    problems = []
    several = session.execute(
        select(AdapterVersion.task, AdapterVersion.backbone_hash, func.count())
        .where(AdapterVersion.status == "active")
        .group_by(AdapterVersion.task, AdapterVersion.backbone_hash).having(func.count() > 1)
    ).all()
    problems += [f"{n} active {task} versions on one backbone" for task, _, n in several]
    for version in session.scalars(select(AdapterVersion).where(AdapterVersion.status != "retired")):
        folder = Path(version.path)
        if not (folder / ADAPTER_FILE).is_file() or not (folder / META_FILE).is_file():
            problems.append(f"{version.status} {version.task} version {version.id}: files missing at {folder}")
    return problems


def _index(session, settings: Settings, backbone) -> list[str]:
    from kb_pipeline.indexing.sync import check_index
    from kb_pipeline.indexing.vector_index import VectorIndex
    from kb_pipeline.store import index_builds, outputs

    embed_key = current_embed_key(settings, backbone)
    problems = []
    active = outputs.active_chunk_ids(session)
    ids, vectors = outputs.load_embeddings(session, embed_key)
    if len(ids) != len(active) or not np.array_equal(ids, active):
        problems.append(f"{len(np.setdiff1d(active, ids))} active chunks have no vector under {embed_key}")
    per_chunk = session.execute(
        select(ChunkEmbedding.chunk_id).where(ChunkEmbedding.embed_key == embed_key)
        .group_by(ChunkEmbedding.chunk_id).having(func.count() > 1)
    ).first()
    if per_chunk:
        problems.append(f"chunk {per_chunk[0]} has several vectors under {embed_key}")
    live = index_builds.live_build(session)
    if live is None:
        return problems + ["no live index build"]
    if live.embed_key != embed_key:
        problems.append(f"the live index is for {live.embed_key}, the current embedder is {embed_key}")
    try:
        index, _ = VectorIndex.load(Path(live.path))
    except Exception as exc:  # missing, truncated or corrupt: a violation, not a crash of the checker
        return problems + [f"live index {live.path} does not load: {exc}"]
    if live.checksum and live.checksum != _sha256(Path(live.path)):
        problems.append(f"live index {live.path} does not match the checksum its build recorded")
    have = np.asarray(index.ids())
    if not np.array_equal(have, ids):
        problems.append(f"index ids != chunks with vectors: {len(np.setdiff1d(ids, have))} missing, "
                        f"{len(np.setdiff1d(have, ids))} extra")
    else:
        stored = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        cosine = np.einsum("ij,ij->i", _reconstruct(index, ids), stored)
        stale = ids[cosine < 0.9999]
        if len(stale):
            problems.append(f"{len(stale)} index vectors differ from their stored embedding, e.g. chunk {stale[0]}")
    check = check_index(settings, embed_key)
    if not check["ok"]:
        problems.append(f"`kb index check` is not ok: {check.get('problem') or check}")
    return problems


def _reconstruct(index, ids: np.ndarray) -> np.ndarray:
    raw = index._index  # IndexIDMap2 keeps id -> slot, so reconstruct() takes chunk ids
    return np.stack([raw.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, index.dim), np.float32)


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def current_embed_key(settings: Settings, backbone=None) -> str:
    from kb_pipeline.enrich.shared_pass import current_embed_key as key
    from kb_pipeline.training import registry

    if backbone is None:
        return key(settings)
    with session_factory(settings)() as session:
        active = registry.active_version(session, "embed", backbone.weights_hash)
    return f"adapter:{active.id}" if active else f"backbone:{backbone.weights_hash[:16]}"


def snapshot(settings: Settings, *, index: bool = True, backbone=None) -> dict:
    """What a clean build and a recovered one must share: documents, chunk texts, keyword search, and
    (with the index) every chunk's vector and the live index's dense search results."""
    from kb_pipeline.search.hybrid import Filters, keyword_hits, search

    Session = session_factory(settings)
    with Session() as session:
        docs = sorted(session.execute(
            select(Document.path, Document.content_sha256).where(Document.status == "active")).all())
        chunks = sorted(session.execute(
            select(Document.path, Chunk.ordinal, Chunk.text).join(Document).where(Document.status == "active")).all())
        out = {"documents": [tuple(d) for d in docs], "chunks": [tuple(c) for c in chunks]}
        names = {c: f"{p}#{o}" for c, p, o in session.execute(select(Chunk.id, Document.path, Chunk.ordinal).join(Document))}
        out["_ranked keyword paths"] = {  # what `kb search --mode keyword` shows; ties broken by row ids
            q: [r["path"] for r in search(session, q, k=5, mode="keyword")] for q in QUERIES
        }
        out["keyword search"] = {  # raw full-text scores, so ties are visible
            q: [(names[c], round(float(sc), 6)) for c, _, sc in keyword_hits(session, q, Filters(), 8)] for q in QUERIES
        }
        if index:
            out.update(_dense_snapshot(session, settings, backbone))
    return out


def _dense_snapshot(session, settings: Settings, backbone) -> dict:
    from kb_pipeline.enrich.shared_pass import load_task_models
    from kb_pipeline.indexing.vector_index import VectorIndex
    from kb_pipeline.store import index_builds, outputs

    names = {cid: (path, ordinal) for cid, path, ordinal in session.execute(
        select(Chunk.id, Document.path, Chunk.ordinal).join(Document).where(Document.status == "active"))}
    models = load_task_models(settings, backbone)
    try:
        ids, vectors = outputs.load_embeddings(session, models.embed_key)
        vindex, _ = VectorIndex.load(Path(index_builds.live_build(session).path))
        scores, hits = vindex.search(np.asarray(models.embed(list(QUERIES)), dtype=np.float32), 8)
    finally:
        models.adapters.close()
    dense = {q: [(names.get(int(h), ("?", -1)), float(sc)) for sc, h in zip(scores[i], hits[i]) if h >= 0]
             for i, q in enumerate(QUERIES)}
    return {"chunk vectors": {names[int(c)]: v for c, v in zip(ids, vectors)}, "dense search": dense}


def compare(now: dict, ref: dict) -> list[str]:
    """Differences between two snapshots; vectors and dense scores are compared up to float noise
    (a chunk embedded in a different batch differs by ~1e-7, which may swap near-ties)."""
    problems = []
    for key, want in ref.items():
        if key not in now or key.startswith("_"):  # "_..." entries are reported by their own tests
            continue
        have = now[key]
        if key == "chunk vectors":
            if set(have) != set(want):
                problems.append(f"chunk vectors: {_first_diff(list(have), list(want))}")
                continue
            worst = min((float(np.dot(have[c], want[c]) / (np.linalg.norm(have[c]) * np.linalg.norm(want[c]))), c)
                        for c in want) if want else (1.0, None)
            if worst[0] < 0.9999:
                problems.append(f"chunk vectors differ from a clean build's, e.g. {worst[1]} (cosine {worst[0]:.5f})")
        elif key in ("dense search", "keyword search"):
            problems += [f"{key} {query!r}: {have.get(query)} != clean build's {hits}"
                         for query, hits in want.items() if not same_ranking(have.get(query, []), hits)]
        elif have != want:
            problems.append(f"{key} differ from a clean build of the same files: {_first_diff(have, want)}")
    return problems


def leftovers(settings: Settings) -> dict:
    """Garbage a crash may leave that is harmless but worth reporting (it never becomes live)."""
    index_dir, adapters_dir = settings.index_dir, settings.adapters_dir
    with session_factory(settings)() as session:
        building = session.scalar(select(func.count()).select_from(IndexBuild).where(IndexBuild.status == "building"))
        referenced = {Path(p) for p in session.scalars(select(AdapterVersion.path))}
    folders = [p for p in adapters_dir.glob("*/*") if p.is_dir()] if adapters_dir.exists() else []
    return {
        "index_temp_files": len(list(index_dir.glob(".*.tmp"))) if index_dir.exists() else 0,
        "index_builds_building": int(building or 0),
        "unreferenced_adapter_folders": sum(1 for p in folders if p not in referenced),
    }


def same_ranking(got: list, want: list, atol: float = 1e-4) -> bool:
    """Equal ranked (item, score) lists, except for the order of tied items and which of the items
    tied at the cut-off made it in (ties are broken by row ids, which differ after a different history)."""
    if len(got) != len(want) or not np.allclose([s for _, s in got], [s for _, s in want], atol=atol):
        return False
    cut = want[-1][1] + atol if want else 0.0
    return {c for c, s in got if s > cut} == {c for c, s in want if s > cut}


def _first_diff(now, ref) -> str:
    if isinstance(now, dict):
        for key in ref:
            if now.get(key) != ref[key]:
                return f"{key!r}: {now.get(key)} != {ref[key]}"
    now_set, ref_set = set(map(str, now)), set(map(str, ref))
    extra, missing = sorted(now_set - ref_set)[:2], sorted(ref_set - now_set)[:2]
    return f"extra {extra}, missing {missing}" if extra or missing else "same items, different order"
