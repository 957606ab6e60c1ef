"""Keep the FAISS index equal to the database: FAISS ids are chunk ids, the DB is the truth.

Every sync runs under the index lock (one writer at a time, across processes), compares the live
index's ids with the active chunks that have a vector under the current embedder, and repairs the
difference from stored embeddings. Each result is written to a new file (temp, fsync, rename) and
recorded as a build; readers switch when the build row commits, so they never see a partial index.
A new embedder gets a new index built beside the old one, swapped in only once complete.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kb_pipeline.config import Settings
from kb_pipeline.indexing.errors import IndexNotBuilt
from kb_pipeline.indexing.locking import index_lock
from kb_pipeline.indexing.vector_index import IndexConfig, IndexCorrupt, VectorIndex, diff_ids
from kb_pipeline.store import derived
from kb_pipeline.store.db import session_factory


def expected_ids(session, embed_key: str) -> np.ndarray:
    ids, _ = derived.load_embeddings(session, embed_key)
    return ids


def sync_index(
    settings: Settings, embed_key: str, *, rebuild: bool = False, config: IndexConfig | None = None,
    dim: int | None = None,
) -> dict:
    """Bring the live index in line with the DB; returns what was done and the index's size.

    `dim` (the embedder's width) is only needed to create an empty index before any vector exists.
    """
    started = time.perf_counter()
    folder = settings.index_dir
    folder.mkdir(parents=True, exist_ok=True)
    Session = session_factory(settings)
    with index_lock(folder):
        with Session() as session:
            live = derived.live_build(session)
            live_info = (live.id, live.embed_key, live.path) if live else None
            ids, vectors = derived.load_embeddings(session, embed_key)
        index, action = None, "built"
        if live_info and live_info[1] == embed_key and not rebuild:
            index = _load_or_none(Path(live_info[2]))
        if index is not None:
            missing, extra = diff_ids(index.ids(), ids)
            if not len(missing) and not len(extra):
                return _report("unchanged", index, embed_key, live_info[2], started, 0, 0)
            index.remove(extra)
            if len(missing):
                positions = np.searchsorted(ids, missing)
                index.add(missing, vectors[positions])
            action = "repaired"
        else:
            missing, extra = ids, np.zeros(0, dtype=np.int64)
            index = _build(ids, vectors, config or IndexConfig(), dim)
        path = _publish(Session, folder, embed_key, index)
    return _report(action, index, embed_key, str(path), started, len(missing), len(extra))


def _build(ids: np.ndarray, vectors: np.ndarray, config: IndexConfig, dim: int | None) -> VectorIndex:
    if len(ids):
        return VectorIndex.build(ids, vectors, config)
    if dim is None:
        raise IndexNotBuilt("no chunk embeddings yet: run `kb enrich` first")
    return VectorIndex.empty(dim, config)


def _publish(Session, folder: Path, embed_key: str, index: VectorIndex) -> Path:
    """Write a new file, then flip the live pointer in one commit; old files go afterwards."""
    with Session.begin() as session:
        build_id = derived.start_build(session, embed_key, index.kind, "")
    path = folder / f"{build_id:06d}-{embed_key.replace(':', '-')}.faiss"
    checksum = index.save(path, {"embed_key": embed_key, "build": build_id})
    with Session.begin() as session:
        derived.finish_build(session, build_id, len(index), checksum, str(path))
    for old in folder.glob("*.faiss"):
        if old != path:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return path


def _load_or_none(path: Path) -> VectorIndex | None:
    try:
        index, _ = VectorIndex.load(path)
        return index
    except (IndexCorrupt, FileNotFoundError, OSError):
        return None


def _report(action: str, index: VectorIndex, embed_key: str, path: str, started: float, added: int, removed: int) -> dict:
    return {"action": action, "embed_key": embed_key, "count": len(index), "kind": index.kind, "path": path,
            "added": int(added), "removed": int(removed), "seconds": round(time.perf_counter() - started, 3)}


def load_live_index(settings: Settings, embed_key: str) -> VectorIndex:
    """The index readers search: synced first (cheap when nothing changed), then loaded."""
    info = sync_index(settings, embed_key)
    index = _load_or_none(Path(info["path"]))
    if index is None:  # another writer replaced it between our sync and load: sync again
        index = _load_or_none(Path(sync_index(settings, embed_key)["path"]))
    if index is None:
        raise IndexCorrupt(f"cannot load the index at {info['path']}")
    return index


def check_index(settings: Settings, embed_key: str) -> dict:
    """Compare the live index file with the DB without changing anything."""
    with session_factory(settings)() as session:
        live = derived.live_build(session)
        ids = expected_ids(session, embed_key)
        chunks = len(derived.active_chunk_ids(session))
    result = {"embed_key": embed_key, "db_vectors": int(len(ids)), "active_chunks": chunks, "live_build": None}
    if live is None:
        return result | {"ok": False, "problem": "no index has been built yet: run `kb enrich`"}
    result["live_build"] = {"id": live.id, "embed_key": live.embed_key, "path": live.path, "count": live.count,
                            "kind": live.kind, "checksum": live.checksum}
    index = _load_or_none(Path(live.path))
    if index is None:
        return result | {"ok": False, "problem": f"index file {live.path} is missing or corrupt"}
    missing, extra = diff_ids(index.ids(), ids)
    ok = live.embed_key == embed_key and not len(missing) and not len(extra) and len(ids) == chunks
    return result | {"ok": bool(ok), "missing": int(len(missing)), "extra": int(len(extra)),
                     "chunks_without_vector": int(chunks - len(ids))}
