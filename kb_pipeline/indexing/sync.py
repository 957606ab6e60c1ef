"""Keep the FAISS index equal to the database: FAISS ids are chunk ids, the DB is the truth.

Every sync runs under the index lock (one writer at a time, across processes), compares the live
index with the active chunks that have a vector under the current embedder, and repairs the
difference from stored embeddings. The comparison is on (chunk id, vector fingerprint) pairs, so a
vector that changed under the same id (a re-embedded chunk, or an id SQLite handed out again) is
replaced, not just ids that are missing or extra. The live file must also be the one its build
recorded (``index_builds.checksum``); any other file is rebuilt from the database.

Each result is written to a new file (temp, fsync, rename) and recorded as a build; readers switch
when the build row commits, so they never see a partial index. A new embedder gets a new index
built beside the old one, swapped in only once complete.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from kb_pipeline.config import Settings
from kb_pipeline.indexing.errors import IndexNotBuilt
from kb_pipeline.indexing.fingerprints import fingerprints
from kb_pipeline.indexing.locking import index_lock
from kb_pipeline.indexing.vector_index import IndexConfig, IndexCorrupt, VectorIndex, diff_vectors, index_form
from kb_pipeline.store import index_builds, outputs
from kb_pipeline.store.db import session_factory

# Loaded live indexes, by file: (path, device, inode, size, mtime_ns, recorded checksum) -> index. A file
# is hashed once per process, not per search; writers never change a file in place (temp + rename), so
# another stat means another file, which is loaded and checked against its build's checksum again.
_LOADED: OrderedDict[tuple, VectorIndex] = OrderedDict()
_LOADED_MAX = 4  # index folders (KB homes) per process; one file each


def expected_ids(session, embed_key: str) -> np.ndarray:
    ids, _ = outputs.load_embeddings(session, embed_key)
    return ids


def expected_vectors(session, embed_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors as the index stores them, their fingerprints) of the DB's active chunks."""
    ids, vectors = outputs.load_embeddings(session, embed_key)
    vectors = index_form(vectors)
    return ids, vectors, fingerprints(vectors)


def sync_index(
    settings: Settings, embed_key: str, *, rebuild: bool = False, config: IndexConfig | None = None,
    dim: int | None = None,
) -> dict:
    """Bring the live index in line with the DB; returns what was done and the index's size.

    `dim` (the embedder's width) is only needed to create an empty index before any vector exists.
    Raises IndexWriteError (an OSError naming the file) when the new file cannot be written; the
    previous build then stays live and its file untouched.
    """
    return _sync(settings, embed_key, rebuild=rebuild, config=config, dim=dim)[0]


def _sync(
    settings: Settings, embed_key: str, *, rebuild: bool = False, config: IndexConfig | None = None,
    dim: int | None = None,
) -> tuple[dict, VectorIndex]:
    started = time.perf_counter()
    folder = settings.index_dir
    folder.mkdir(parents=True, exist_ok=True)
    Session = session_factory(settings)
    with index_lock(folder):
        with Session() as session:
            live = index_builds.live_build(session)
            live_info = (live.embed_key, live.path, live.checksum) if live else None
            ids, vectors, fps = expected_vectors(session, embed_key)
        index, problem = None, None
        if live_info and live_info[0] == embed_key and not rebuild:
            index, problem = _open(Path(live_info[1]), live_info[2])
        if index is not None:
            missing, extra, stale = diff_vectors(index.ids(), index.fingerprints(), ids, fps)
            if not (len(missing) or len(extra) or len(stale)):
                return _report("unchanged", index, embed_key, live_info[1], started), index
            index = index.copy()  # the loaded one may be in use by searches in this process
            index.remove(np.concatenate([extra, stale]))
            put = np.union1d(missing, stale)
            index.add(put, vectors[np.searchsorted(ids, put)])
            action = "repaired"
        else:
            missing, extra, stale = ids, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
            index = _build(ids, vectors, config or IndexConfig(), dim)
            action = "built"
        path = _publish(Session, folder, embed_key, index)
    report = _report(action, index, embed_key, str(path), started, missing, extra, stale)
    return (report | {"problem": problem} if problem else report), index


def _build(ids: np.ndarray, vectors: np.ndarray, config: IndexConfig, dim: int | None) -> VectorIndex:
    if len(ids):
        return VectorIndex.build(ids, vectors, config)
    if dim is None:
        raise IndexNotBuilt("no chunk embeddings yet: run `kb enrich` first")
    return VectorIndex.empty(dim, config)


def _publish(Session, folder: Path, embed_key: str, index: VectorIndex) -> Path:
    """Write a new file, then flip the live pointer in one commit; old files go afterwards.

    If anything fails before the flip, the new build is marked failed and its files removed, so
    the previous build stays live and nothing is left behind. Called under the folder's lock, so
    'building' rows and temp files already there were left by a writer that died.
    """
    def path_for(build_id: int) -> Path:
        return folder / f"{build_id:06d}-{embed_key.replace(':', '-')}.faiss"

    with Session.begin() as session:
        index_builds.fail_builds(session, folder=str(folder))
        build_id = index_builds.start_build(session, embed_key, index.kind, lambda i: str(path_for(i)))
    path = path_for(build_id)
    for litter in folder.glob(".*.tmp"):
        litter.unlink(missing_ok=True)
    try:
        checksum = index.save(path, {"embed_key": embed_key, "build": build_id})
        with Session.begin() as session:
            index_builds.finish_build(session, build_id, len(index), checksum, str(path))
    except BaseException:
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        try:
            with Session.begin() as session:
                index_builds.fail_builds(session, [build_id])
        except Exception:  # noqa: BLE001 (the database is the problem: the next writer marks it failed)
            pass
        raise
    _remember(path, checksum, index)
    for old in folder.glob("*.faiss"):
        if old != path:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return path


def _file_key(path: Path, checksum: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, checksum)


def _remember(path: Path, checksum: str, index: VectorIndex) -> None:
    key = _file_key(path, checksum)
    if key is not None:
        _keep(key, index)


def _keep(key: tuple, index: VectorIndex) -> None:
    """Cache ``index`` as the one loaded from ``key``'s file; earlier files of its folder are dropped."""
    folder = Path(key[0]).parent
    for old in [k for k in _LOADED if Path(k[0]).parent == folder]:
        del _LOADED[old]
    _LOADED[key] = index
    while len(_LOADED) > _LOADED_MAX:
        _LOADED.popitem(last=False)


def _open(path: Path, checksum: str) -> tuple[VectorIndex | None, str | None]:
    """The live build's index, or (None, why it must be rebuilt from the database)."""
    key = _file_key(path, checksum)  # stat before reading: a file replaced meanwhile gets another key
    if key is None:
        return None, f"index file {path} is missing"
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key], None
    try:
        index, _ = VectorIndex.load(path, checksum=checksum)
    except FileNotFoundError:
        return None, f"index file {path} is missing"
    except (IndexCorrupt, OSError) as exc:
        return None, str(exc)
    if index.legacy_file:
        return None, f"index file {path} predates vector fingerprints"
    _keep(key, index)
    return index, None


def _report(
    action: str, index: VectorIndex, embed_key: str, path: str, started: float,
    added=(), removed=(), stale=(),
) -> dict:
    """`added`/`removed`: ids missing from / extra in the old index; `stale`: ids whose vector was replaced."""
    return {"action": action, "embed_key": embed_key, "count": len(index), "kind": index.kind, "path": path,
            "added": len(added), "removed": len(removed), "stale": len(stale),
            "seconds": round(time.perf_counter() - started, 3)}


def load_live_index(settings: Settings, embed_key: str) -> VectorIndex:
    """The index readers search: synced first (cheap when nothing changed: no file is re-read)."""
    return _sync(settings, embed_key)[1]


def check_index(settings: Settings, embed_key: str) -> dict:
    """Compare the live index file with the DB without changing anything.

    Stricter than a sync: the file is always re-read and checked against its build's checksum,
    and the fingerprints are recomputed from the vectors in it rather than read from its sidecar.
    """
    with session_factory(settings)() as session:
        live = index_builds.live_build(session)
        ids, _, fps = expected_vectors(session, embed_key)
        chunks = len(outputs.active_chunk_ids(session))
    result = {"embed_key": embed_key, "db_vectors": int(len(ids)), "active_chunks": chunks, "live_build": None}
    if live is None:
        return result | {"ok": False, "problem": "no index has been built yet: run `kb enrich`"}
    result["live_build"] = {"id": live.id, "embed_key": live.embed_key, "path": live.path, "count": live.count,
                            "kind": live.kind, "checksum": live.checksum}
    try:
        index, _ = VectorIndex.load(Path(live.path), checksum=live.checksum)
    except FileNotFoundError:
        return result | {"ok": False, "problem": f"index file {live.path} is missing: run `kb index rebuild`"}
    except (IndexCorrupt, OSError) as exc:
        return result | {"ok": False, "problem": f"{exc}"}
    have = np.empty(len(index), dtype=np.uint64)
    for start in range(0, len(have), 8192):
        have[start:start + 8192] = fingerprints(index.vectors(index.ids()[start:start + 8192]))
    missing, extra, stale = diff_vectors(index.ids(), have, ids, fps)
    counts = {"missing": int(len(missing)), "extra": int(len(extra)), "stale": int(len(stale)),
              "chunks_without_vector": int(chunks - len(ids))}
    problems = []
    if live.embed_key != embed_key:
        problems.append(f"the index was built for {live.embed_key}, the current embedder is {embed_key}")
    if len(missing) or len(extra) or len(stale):
        problems.append(f"{len(missing)} vectors missing, {len(extra)} extra and {len(stale)} stale (different from "
                        "the stored embedding under the same chunk id)")
    if len(ids) != chunks:
        problems.append(f"{chunks - len(ids)} active chunks have no vector yet")
    if index.legacy_file:
        problems.append("the index file predates vector fingerprints")
    result |= counts | {"ok": not problems}
    if problems:
        result["problem"] = "; ".join(problems) + ": run `kb enrich` (or `kb index rebuild`)"
    return result
