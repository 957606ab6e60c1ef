"""What the index remembers about a search's cached allowed set, and why that is safe."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from kb_pipeline.indexing.vector_index import IndexConfig, VectorIndex

DIM = 16


def data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    x = centres[rng.integers(20, size=n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return np.arange(10, 10 + n, dtype=np.int64), x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(ids, vecs, queries, k):
    sims = queries @ vecs.T
    return ids[np.argsort(-sims, axis=1, kind="stable")[:, :k]]


def frozen(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


APPROXIMATE = {"hnsw": IndexConfig(kind="hnsw", hnsw_m=8, hnsw_ef_construction=20, hnsw_ef_search=10),
               "ivf": IndexConfig(kind="ivf", ivf_nprobe=1)}


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_a_small_cached_allowed_set_on_an_approximate_index_is_searched_exactly(monkeypatch, kind):
    ids, vecs = data(25_000)
    index = VectorIndex.build(ids, vecs, APPROXIMATE[kind])
    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(len(ids), 1100, replace=False))  # 4.4% of the index, above EXACT_MAX_IDS
    queries = vecs[rng.integers(len(ids), size=30)] + 0.1
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    want = exact_top(ids[pick], vecs[pick], queries, 10)
    monkeypatch.setattr(VectorIndex, "_search", lambda *a: pytest.fail("FAISS was searched"))
    _, found = index.search(queries, 10, frozen(ids[pick]))
    assert np.array_equal(found, want)  # one matmul over the remembered vectors: recall 1.0


def test_remembered_selections_never_outlive_a_change_of_the_index():
    ids, vecs = data(300)
    index = VectorIndex.build(ids, vecs, IndexConfig(kind="flat"))
    allowed = frozen(ids[:200])
    q = vecs[:1]
    assert index.search(q, 5, allowed)[1][0][0] == ids[0]
    index.remove(ids[:1])  # the remembered selection still lists ids[0]
    assert ids[0] not in index.search(q, 5, allowed)[1][0]
    index.add(ids[:1], vecs[:1])
    assert index.search(q, 5, allowed)[1][0][0] == ids[0]
    mutable = ids[:50].copy()  # a writeable array may change under the index: it is never remembered
    index.search(q, 5, mutable)
    mutable[:] = ids[250:300]
    assert set(index.search(q, 5, mutable)[1][0]) <= set(ids[250:300])


def test_an_allowed_set_covering_everything_skips_the_selector(monkeypatch):
    ids, vecs = data(2000)
    index = VectorIndex.build(ids, vecs, IndexConfig(kind="flat"))
    made = []
    real = faiss.IDSelectorBitmap
    monkeypatch.setattr(faiss, "IDSelectorBitmap", lambda *a: made.append(1) or real(*a))
    everyone = frozen(ids)
    _, found = index.search(vecs[:3], 5, everyone)
    assert not made
    assert np.array_equal(found, exact_top(ids, vecs, vecs[:3], 5))
    some = frozen(ids[::2])
    for _ in range(3):
        index.search(vecs[:3], 5, some)
    assert len(made) == 1  # built once for the remembered set, not per query
