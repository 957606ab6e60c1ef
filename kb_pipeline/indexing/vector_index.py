"""FAISS index of chunk embeddings whose FAISS ids ARE the SQL chunk ids.

Keying FAISS by chunk id (``IndexIDMap2``) means a search hit needs no lookup table, and
re-embedding a chunk replaces its vector in place instead of leaving a stale duplicate. Vectors
are L2-normalised so inner product == cosine similarity. The kinds (flat, HNSW, IVF) are made in
:mod:`kb_pipeline.indexing.index_kinds`. HNSW graphs cannot delete nodes (and IVF's direct map cannot
either), so the approximate kinds tombstone removed slots (their id becomes -1 and every search filters
them out) and rebuild themselves once tombstones pass ``COMPACT_DEAD_FRACTION``. Not thread-safe for writers;
writers in different processes serialise with :func:`kb_pipeline.indexing.locking.index_lock`.

An id alone does not say which vector FAISS holds for it (a reused or re-embedded id keeps the old
one), so every indexed vector has a 64-bit **fingerprint** of its float32 bytes, saved in the
sidecar; the sync compares (id, fingerprint) pairs with the database's, not ids alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import faiss
import numpy as np

from kb_pipeline.indexing.errors import IndexWriteError
from kb_pipeline.indexing.fingerprints import FINGERPRINT, decode, encode, fingerprints
from kb_pipeline.indexing.index_kinds import KINDS, ivf_outgrown, kind_of, loadable, new_faiss, search_params
from kb_pipeline.indexing.locking import fsync_path, temp_path

MAX_ID = int(np.iinfo(np.int64).max)  # ids must lie in [0, MAX_ID): -1 means "no result"/tombstone
EXACT_MAX_IDS = 1_000  # allowed sets this small are brute-forced: ~1 ms at 1k ids, about what a 100k flat scan
# with a selector costs, and HNSW + a selective filter comes back short and falls back to brute force anyway
# A search's cached (read-only) allowed set that is at most this share of an approximate (HNSW/IVF) index, and at most
# EXACT_CACHED_MAX ids, keeps its vectors beside it and is searched exactly: HNSW with a selective filter loses
# recall (100k, 3.6% allowed: recall@10 0.77 here), while one matmul over 20k cached vectors takes ~1-2 ms.
EXACT_SHARE = 0.05
EXACT_CACHED_MAX = 20_000
COMPACT_DEAD_FRACTION = 0.25  # HNSW/IVF rebuild once this share of their slots are tombstones
FORMAT = 2  # 2: the sidecar carries each vector's fingerprint; 1 (none) still loads


from kb_pipeline.errors import IndexCorrupt  # noqa: E402,F401  (the one error type)


@dataclass(frozen=True)
class IndexConfig:
    # "flat" | "hnsw" | "ivf" | "auto": flat, then HNSW from hnsw_threshold, then IVF from ivf_threshold. Measured
    # here (benchmarks/query_path.py --part scale, MiniLM-derived vectors, FAISS time per filtered query, 2 loaded
    # cores): flat 20 ms at 100k, 150 ms at 1M (exact). IVF (nprobe 32) 1-2 ms at 100k, 4-8 ms at 1M, recall@10
    # 0.996 / 0.995, built in 8-13 s / 113-172 s. HNSW at 100k: M=32, efC=200 ~10 min to build; M=16, efC=80 38 s but
    # recall@10 0.87. So by default auto goes flat -> IVF at 50k (flat ~10 ms there, interpolated) and skips HNSW
    # (hnsw_threshold == ivf_threshold); set hnsw_threshold lower to use HNSW between the two.
    kind: str = "auto"
    hnsw_threshold: int = 50_000
    ivf_threshold: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # cells; 0: ivf_nlist_factor * sqrt(vectors at training time)
    ivf_nlist_factor: float = 4.0
    ivf_min_points: int = 39  # at most one cell per this many training vectors (FAISS's k-means minimum)
    ivf_nprobe: int = 32  # cells scanned per unfiltered query (1M: recall@10 0.977 at 16, 0.995 at 32, 1.0 at 64)
    ivf_filter_probe_max: int = 4  # under a filter, nprobe / allowed share cells, at most this many times nprobe
    ivf_train_points: int = 32  # k-means sample per cell
    ivf_train_iterations: int = 10

    def __post_init__(self) -> None:
        if self.kind not in (*KINDS, "auto"):
            raise ValueError(f"IndexConfig.kind must be one of {(*KINDS, 'auto')}, not {self.kind!r}")

    def kind_for(self, size: int) -> str:
        """The concrete kind for an index of ``size`` vectors."""
        if self.kind != "auto":
            return self.kind
        if size >= self.ivf_threshold:
            return "ivf"
        return "hnsw" if size >= self.hnsw_threshold else "flat"


def _as_ids(ids: np.ndarray, *, unique: bool = True) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= MAX_ID:
        raise ValueError("ids must lie in [0, 2**63 - 1): -1 is FAISS's 'no result' marker")
    if unique and _sorted_unique(arr).size != arr.size:
        raise ValueError("ids contain duplicates; which vector should win is ambiguous")
    return arr


def _as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """float32 with unit rows; the caller's array is never modified (copied only when a row needs it).

    Only rows that are not unit length already are divided, each on its own, so a row comes out
    the same whatever it is batched with: fingerprints of the DB's rows match what FAISS holds.
    """
    arr = np.array(vectors, dtype=np.float32, ndmin=2, copy=None)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {arr.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr))  # float32, 5x faster than np.linalg.norm here
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("vectors must be finite and non-zero to be normalised")
    off = np.abs(norms - 1.0) > 1e-4
    if off.any():
        arr = arr.copy()
        arr[off] /= norms[off, None]
    return arr


def index_form(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` exactly as :meth:`VectorIndex.add` would store them (unit rows, float32)."""
    if not np.size(vectors):
        return np.zeros((0, np.shape(vectors)[1] if np.ndim(vectors) == 2 else 0), dtype=np.float32)
    return _as_vectors(vectors, np.shape(vectors)[1])


def diff_ids(index_ids: np.ndarray, expected_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(missing, extra): ids expected but not indexed, and ids indexed but not expected (sorted)."""
    have = _sorted_unique(np.asarray(index_ids, dtype=np.int64).ravel())
    want = _sorted_unique(np.asarray(expected_ids, dtype=np.int64).ravel())
    return np.setdiff1d(want, have, assume_unique=True), np.setdiff1d(have, want, assume_unique=True)


def diff_vectors(
    index_ids: np.ndarray, index_fps: np.ndarray, expected_ids: np.ndarray, expected_fps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(missing, extra, stale) ids: ``stale`` are in both, but the index holds a different vector.

    Both sides are sorted unique ids with their fingerprints (``VectorIndex.ids`` / ``fingerprints``
    and ``load_embeddings`` order); everything is numpy, no per-id Python.
    """
    missing, extra = diff_ids(index_ids, expected_ids)
    _, at_index, at_expected = np.intersect1d(index_ids, expected_ids, assume_unique=True, return_indices=True)
    differs = np.asarray(index_fps)[at_index] != np.asarray(expected_fps)[at_expected]
    return missing, extra, np.asarray(index_ids, dtype=np.int64)[at_index[differs]]


@contextmanager
def _omp_threads_at_most(n: int) -> Iterator[None]:
    """Cap FAISS's OpenMP team at ``n`` threads, for the calling thread only (OpenMP's setting is per thread).

    FAISS parallelises search over queries, so a single query gains nothing from a team, while waking one on a
    busy CPU costs scheduler ticks: 16 -> 0.3 ms (HNSW), 64 -> 16 ms (flat, 100k) on a loaded 2-core machine.
    """
    before = faiss.omp_get_max_threads()
    if n >= before:
        yield
        return
    faiss.omp_set_num_threads(max(n, 1))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    """np.unique via a plain sort: numpy 2.4's hash-based unique took 8-18 ms for 30k ids here, a sort 0.4 ms."""
    ids = np.sort(ids)
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids


class VectorIndex:
    """IndexIDMap2 over an inner-product index of L2-normalised float32 vectors; FAISS id == chunk id.

    The IDMap2 stores the ids (in the saved file too) and does add/remove/reconstruct. Searches go
    to the inner index with an ``IDSelectorBitmap`` over its slots, built from a cached sorted
    id -> slot table rather than hashing the allowed ids into an ``IDSelectorBatch`` on every call
    (HNSW, 100k, 30% allowed: p95 55 -> 10 ms here); the same bitmap hides HNSW/IVF tombstones.
    """

    def __init__(self, index: faiss.IndexIDMap2, config: IndexConfig = IndexConfig()) -> None:
        self._index = index
        self._inner = faiss.downcast_index(index.index)
        self.config = config
        self.dim: int = index.d
        self.kind: str = kind_of(self._inner)
        self._slots: np.ndarray | None = None  # id_map: slot -> id, -1 = tombstone (cached)
        self._table: tuple[np.ndarray, np.ndarray] | None = None  # (sorted live ids, their slots)
        self._fps: np.ndarray | None = None  # fingerprints aligned with ids() (cached, or from the sidecar)
        # allowed-id arrays seen recently -> (their indexed ids, slots, FAISS selector or None for "all"), by
        # identity; only read-only arrays (a search's cached allowed set) are remembered, so none can go stale
        self._selections: OrderedDict[int, tuple] = OrderedDict()
        self.legacy_file = False  # loaded from a sidecar without fingerprints (written before FORMAT 2)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, config: IndexConfig = IndexConfig()) -> VectorIndex:
        """Index ``vectors`` (n, dim) under ``ids``; rows are normalised here if they are not unit length."""
        dim = np.shape(vectors)[1]
        index = cls(new_faiss(dim, config.kind_for(len(ids)), config), config)
        index.add(ids, vectors)  # an IVF index is trained on these vectors first
        return index

    @classmethod
    def empty(cls, dim: int, config: IndexConfig = IndexConfig(), expected_size: int = 0) -> VectorIndex:
        """An empty index; ``expected_size`` picks the kind when ``config.kind == "auto"`` (an empty IVF index is
        trained on its first add)."""
        return cls(new_faiss(dim, config.kind_for(expected_size), config), config)

    def _slot_ids(self) -> np.ndarray:
        if self._slots is None:
            self._slots = faiss.vector_to_array(self._index.id_map)
        return self._slots

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        if self._table is None:
            slots = self._slot_ids()
            live = np.flatnonzero(slots >= 0)
            order = np.argsort(slots[live])
            ids = slots[live][order]
            ids.flags.writeable = False
            self._table = (ids, live[order])
        return self._table

    def _changed(self) -> None:
        self._slots = self._table = self._fps = None
        self._selections = OrderedDict()

    def copy(self) -> VectorIndex:
        """An independent copy (FAISS clone), for changing an index others may be searching."""
        twin = VectorIndex(faiss.clone_index(self._index), self.config)
        twin._fps = self._fps
        return twin

    def fingerprints(self) -> np.ndarray:
        """Each indexed vector's fingerprint (uint64), aligned with :meth:`ids` (read-only, cached)."""
        if self._fps is None:
            ids, slots = self._lookup()
            fps = np.empty(len(ids), dtype=np.uint64)
            for start in range(0, len(ids), 8192):  # bounded: never the whole matrix at once
                fps[start:start + 8192] = fingerprints(self._inner.reconstruct_batch(slots[start:start + 8192]))
            fps.flags.writeable = False
            self._fps = fps
        return self._fps

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (n, dim), in the given order; KeyError if one is not indexed."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        live, slots = self._lookup()
        pos = np.minimum(np.searchsorted(live, ids), max(len(live) - 1, 0))
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        if not len(live) or not np.array_equal(live[pos], ids):
            raise KeyError(f"ids not in the index: {np.setdiff1d(ids, live)[:10].tolist()}")
        return self._inner.reconstruct_batch(slots[pos])

    def ids(self) -> np.ndarray:
        """All indexed ids, sorted int64 (a read-only cached array; copy before mutating)."""
        return self._lookup()[0]

    def __len__(self) -> int:
        if self.kind == "flat":
            return self._index.ntotal
        return int(np.count_nonzero(self._slot_ids() >= 0))

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the indexed members of sorted unique ``ids``, their slots)."""
        live, slots = self._lookup()
        if not len(live) or not len(ids):
            return ids[:0], slots[:0]
        pos = np.minimum(np.searchsorted(live, ids), len(live) - 1)
        hit = live[pos] == ids
        return ids[hit], slots[pos[hit]]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors; ids already present are replaced, so re-embedding a chunk never duplicates it."""
        ids = _as_ids(ids)
        if not len(ids) and not np.size(vectors):
            return
        vecs = _as_vectors(vectors, self.dim)
        if len(vecs) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(vecs)} vectors")
        self.remove(ids)
        if not self._index.is_trained:  # an empty IVF index: cells from this first batch
            self._replace(new_faiss(self.dim, self.kind, self.config, train=vecs))
        self._index.add_with_ids(vecs, ids)  # IVF: each vector goes to its nearest trained cell
        self._changed()
        grown = self.config.kind_for(len(self))
        if KINDS.index(grown) > KINDS.index(self.kind):
            self._rebuild(grown)  # "auto" outgrew its kind: a one-off conversion
        elif self.kind == "ivf" and ivf_outgrown(self._inner, len(self), self.config):
            self._rebuild("ivf")  # cells trained for far fewer vectors: retrain

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (absent ones are ignored); returns how many were present."""
        present, slots = self._locate(_sorted_unique(_as_ids(ids, unique=False)))
        if not len(present):
            return 0
        if self.kind == "flat":
            self._index.remove_ids(present)
        else:
            id_map = self._slot_ids().copy()
            id_map[slots] = -1
            faiss.copy_array_to_vector(id_map, self._index.id_map)
            self._index.construct_rev_map()
        self._changed()
        if self.kind != "flat" and self._dead() > COMPACT_DEAD_FRACTION * self._index.ntotal:
            self._rebuild(self.kind)
        return len(present)

    def _dead(self) -> int:
        return self._index.ntotal - len(self)

    def _rebuild(self, kind: str) -> None:
        """Re-create the FAISS index from the live vectors (drops tombstones, changes kind, retrains IVF cells)."""
        ids, slots = self._lookup()
        vecs = self._inner.reconstruct_batch(slots)
        index = new_faiss(self.dim, kind, self.config, train=vecs if len(vecs) else None)
        if len(ids):
            index.add_with_ids(vecs, ids)
        self._replace(index)

    def _replace(self, index: faiss.IndexIDMap2) -> None:
        self._index, self._inner = index, faiss.downcast_index(index.index)
        self.kind = kind_of(self._inner)
        self._changed()

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Top-``k`` cosine scores and ids per query row; missing slots are score -inf, id -1.

        ``allowed_ids`` restricts the search *before* ranking, so k results come back whenever k
        allowed ids are indexed and a forbidden id never appears. HNSW and IVF are approximate: when
        they return fewer results than are available (selective filters), those rows are recomputed
        exactly over the allowed vectors.
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        q = _as_vectors(queries, self.dim)
        with _omp_threads_at_most(len(q)):
            ids, slots, selector, cached = self._selection(allowed_ids)
            restrict = selector is not None
            if cached is not None:
                return self._exact(q, k, ids, slots, cached)
            if not len(ids) or (restrict and len(ids) <= EXACT_MAX_IDS):  # FAISS never sees an empty set
                return self._exact(q, k, ids, slots)
            return self._search(q, k, ids, slots, selector)

    def _selection(self, allowed_ids: np.ndarray | None) -> tuple:
        """(indexed allowed ids, their slots, a FAISS selector over those slots or None when every live slot is
        allowed, their vectors when kept for an exact search or None).

        Remembered for read-only arrays, by identity: a search's cached allowed set costs the sort, lookup and
        bitmap once, not on every query (1M ids: ~30 ms).
        """
        if allowed_ids is None:
            ids, slots = self._lookup()
            return ids, slots, (self._bitmap(slots) if self._dead() > 0 else None), None  # only tombstones to hide
        key = id(allowed_ids)
        found = self._selections.get(key)
        if found is not None and found[0] is allowed_ids:
            return found[1]
        ids, slots = self._locate(_sorted_unique(np.asarray(allowed_ids, dtype=np.int64).ravel()))
        everything = len(ids) == len(self) and self._dead() == 0
        selection = (ids, slots, None if everything else self._bitmap(slots), None)
        if isinstance(allowed_ids, np.ndarray) and not allowed_ids.flags.writeable:
            small = 0 < len(ids) <= min(EXACT_CACHED_MAX, EXACT_SHARE * self._index.ntotal)
            if self.kind != "flat" and small:
                selection = (*selection[:3], self._inner.reconstruct_batch(slots))
            self._selections[key] = (allowed_ids, selection)  # holding the array keeps its id from being reused
            while len(self._selections) > 16:
                self._selections.popitem(last=False)
        return selection

    def _bitmap(self, slots: np.ndarray):
        mask = np.zeros(self._index.ntotal, dtype=bool)
        mask[slots] = True
        return faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))  # the wrapper keeps the array alive

    def _search(self, q: np.ndarray, k: int, ids: np.ndarray, slots: np.ndarray, selector) -> tuple:
        """FAISS search over ``slots`` (all of them when ``selector`` is None), exact rerun for short rows."""
        share = len(ids) / max(self._index.ntotal, 1) if selector is not None else 1.0
        params = search_params(self.kind, self._inner, self.config, k, share)
        if selector is not None:
            params.sel = selector
        scores, found = self._inner.search(q, k, params=params)
        valid = found >= 0
        labels = np.where(valid, self._slot_ids()[np.where(valid, found, 0)], -1)
        scores[~valid] = -np.inf
        short = valid.sum(axis=1) < min(k, len(ids))
        if short.any():
            scores[short], labels[short] = self._exact(q[short], k, ids, slots)
        return scores, labels

    def _exact(
        self, q: np.ndarray, k: int, ids: np.ndarray, slots: np.ndarray, vectors: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the given (indexed, unique) ids (their ``vectors`` if already at hand): exact, and
        cheap when they are few."""
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        labels = np.full((len(q), k), -1, dtype=np.int64)
        if not len(ids):
            return scores, labels
        base = self._inner.reconstruct_batch(slots) if vectors is None else vectors
        top = min(k, len(ids))
        # FAISS's kernels (one OpenMP thread per query, capped by the caller), not numpy's matmul: numpy's OpenBLAS
        # runs its own threads, which fought the query encoder's for the 2 cores (100k, tag filter: 7-11 ms here)
        scores[:, :top], best = faiss.knn(q, base, top, metric=faiss.METRIC_INNER_PRODUCT)
        labels[:, :top] = ids[best]
        return scores, labels

    def save(self, path: Path, meta: dict) -> str:
        """Atomically write the index and its JSON sidecar; returns the index file's sha256.

        Each file is written to a temp file in the same folder, fsynced and renamed over the old
        one, so readers only ever see complete files. A crash between the two renames leaves a new
        index next to an old sidecar; ``load`` then raises IndexCorrupt (rebuild from the DB). An
        OS error (disk full, I/O error) leaves no temp file behind and raises IndexWriteError naming
        ``path`` and the error; the files already at ``path`` are untouched unless the renames began.
        """
        path = Path(path)
        sidecar_path = path.with_suffix(".json")
        if sidecar_path == path:
            raise ValueError(f"{path}: the index file cannot itself end in .json")
        data = faiss.serialize_index(self._index)  # in memory, so write errors are plain OSErrors with errno
        checksum = hashlib.sha256(data).hexdigest()
        sidecar = {
            "format": FORMAT, "meta": meta, "count": len(self), "dim": self.dim, "kind": self.kind,
            "sha256": checksum, "config": asdict(self.config), "fingerprint": FINGERPRINT,
            "fingerprints": encode(self.fingerprints()),
        }
        index_tmp = sidecar_tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            index_tmp, sidecar_tmp = temp_path(path), temp_path(sidecar_path)
            _write_file(index_tmp, data)
            _write_file(sidecar_tmp, json.dumps(sidecar, indent=1, sort_keys=True).encode())
            os.replace(index_tmp, path)
            os.replace(sidecar_tmp, sidecar_path)
            fsync_path(path.parent)
        except OSError as exc:
            raise IndexWriteError.saving(path, exc) from exc
        finally:
            for tmp in (index_tmp, sidecar_tmp):
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
        return checksum

    @classmethod
    def load(cls, path: Path, checksum: str | None = None) -> tuple[VectorIndex, dict]:
        """Load an index saved by :meth:`save`, verifying it against its sidecar; returns (index, meta).

        ``checksum``: the sha256 recorded when the file was written (``index_builds.checksum``); a
        file that differs was replaced or altered behind the KB's back, even if its sidecar agrees.
        Raises FileNotFoundError when no index file exists (never built) and IndexCorrupt when the
        index or its sidecar is unreadable, truncated, inconsistent or not the recorded file.
        """
        path = Path(path)
        sidecar_path = path.with_suffix(".json")
        if not path.exists():
            raise FileNotFoundError(f"no vector index at {path}")
        for _ in range(3):  # a writer may replace the pair while we read it: retry until stable
            before = _read(sidecar_path)
            data = _read(path)
            if _read(sidecar_path) == before:
                break
        try:
            sidecar = json.loads(before)
            expected = (sidecar["sha256"], sidecar["dim"], sidecar["count"], sidecar["kind"], sidecar["meta"])
            known = {f.name for f in fields(IndexConfig)}
            config = IndexConfig(**{k: v for k, v in sidecar.get("config", {}).items() if k in known})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexCorrupt(f"{sidecar_path}: malformed index sidecar ({exc!r})") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected[0]:
            raise IndexCorrupt(
                f"{path}: checksum does not match {sidecar_path.name} (truncated or corrupted file, or an "
                "interrupted save); rebuild the index from the database"
            )
        if checksum is not None and actual != checksum:
            raise IndexCorrupt(
                f"{path}: checksum {actual[:12]}... is not the {checksum[:12]}... recorded for this build "
                "(the file was replaced or changed outside kb); rebuild the index from the database"
            )
        try:
            raw = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexCorrupt(f"{path}: FAISS cannot read the index ({exc})") from exc
        inner = faiss.downcast_index(raw.index) if isinstance(raw, faiss.IndexIDMap2) else raw
        if not loadable(inner) or inner.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexCorrupt(f"{path}: not an IndexIDMap2 over an inner-product flat/HNSW/IVF index")
        index = cls(raw, config)
        if (index.dim, len(index), index.kind) != tuple(expected[1:4]):
            raise IndexCorrupt(f"{path}: contents (dim, count, kind) disagree with {sidecar_path.name}")
        index._fps = _saved_fingerprints(sidecar, len(index), sidecar_path)
        index.legacy_file = index._fps is None
        return index, expected[4]


def _saved_fingerprints(sidecar: dict, count: int, sidecar_path: Path) -> np.ndarray | None:
    """The sidecar's fingerprints, or None when it predates them (or names another function)."""
    if sidecar.get("fingerprint") != FINGERPRINT or "fingerprints" not in sidecar:
        return None
    try:
        return decode(sidecar["fingerprints"], count)
    except (ValueError, TypeError) as exc:
        raise IndexCorrupt(f"{sidecar_path}: malformed fingerprints ({exc})") from exc


def _write_file(path: Path, data) -> None:
    """Write ``data`` to ``path`` and fsync it (OSError on a full disk or an I/O error)."""
    with open(path, "wb") as fh:
        fh.write(memoryview(data))
        fh.flush()
        os.fsync(fh.fileno())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IndexCorrupt(f"{path}: unreadable ({exc})") from exc
