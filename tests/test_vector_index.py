"""VectorIndex: ids stay exact under add/replace/remove, filtered search never leaks, files survive crashes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_pipeline.indexing import vector_index
from kb_pipeline.indexing.errors import IndexWriteError
from kb_pipeline.indexing.locking import index_lock
from kb_pipeline.indexing.vector_index import IndexConfig, IndexCorrupt, VectorIndex, diff_ids

DIM = 16
# Small graphs build fast; the search-time ef is what matters for these tests. IVF: ~sqrt(n) cells even for tiny
# indexes (ivf_min_points=1), so the tests exercise cells that a query does not scan.
FAST_HNSW = dict(hnsw_m=16, hnsw_ef_construction=40, hnsw_ef_search=64)
FAST_IVF = dict(ivf_min_points=1, ivf_nlist_factor=1.0, ivf_nprobe=24)
KINDS = ["flat", "hnsw", "ivf"]


def config(kind: str, **kw) -> IndexConfig:
    return IndexConfig(kind=kind, **{**FAST_HNSW, **FAST_IVF, **kw})


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(ids: np.ndarray, vecs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries @ vecs.T
    order = np.argsort(-sims, axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), ids[order]


def dataset(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.choice(2**62, size=n, replace=False).astype(np.int64), unit(rng, n)


@pytest.mark.parametrize("kind", KINDS)
def test_add_replace_remove_keep_ids_exact(kind):
    ids, vecs = dataset(0, 300)
    index = VectorIndex.build(ids[:200], vecs[:200], config(kind))
    assert index.kind == kind and len(index) == 200
    index.add(ids[200:], vecs[200:])
    new_vecs = unit(np.random.default_rng(1), 50)
    index.add(ids[:50], new_vecs)  # re-embedding: replaced, not duplicated
    assert np.array_equal(index.ids(), np.sort(ids)) and len(index) == 300

    scores, found = index.search(new_vecs[:5], 1)
    assert np.array_equal(found[:, 0], ids[:5]) and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    current = np.concatenate([new_vecs, vecs[50:]])
    old_scores, _ = index.search(vecs[:5], 1)
    assert np.allclose(old_scores, brute_force(ids, current, vecs[:5], 1)[0], atol=1e-5)

    absent = np.array([7, 11], dtype=np.int64)
    assert index.remove(np.concatenate([ids[:30], absent])) == 30
    assert index.remove(ids[:30]) == 0
    assert np.array_equal(index.ids(), np.sort(ids[30:])) and len(index) == 270
    _, found = index.search(unit(np.random.default_rng(2), 20), 10)
    assert not np.isin(found, ids[:30]).any()


def test_hnsw_compacts_tombstones_and_auto_grows_into_hnsw():
    ids, vecs = dataset(3, 200)
    index = VectorIndex.build(ids, vecs, config("hnsw"))
    index.remove(ids[:40])  # 20% tombstoned: kept
    assert index._index.ntotal == 200 and len(index) == 160
    index.remove(ids[40:60])  # 30%: rebuilt without them
    assert index._index.ntotal == 140 and np.array_equal(index.ids(), np.sort(ids[60:]))

    auto = VectorIndex.empty(DIM, config("auto", hnsw_threshold=100))
    auto.add(ids[:60], vecs[:60])
    assert auto.kind == "flat"
    auto.add(ids[60:120], vecs[60:120])
    assert auto.kind == "hnsw" and np.array_equal(auto.ids(), np.sort(ids[:120]))
    assert VectorIndex.empty(DIM, config("auto", hnsw_threshold=100), expected_size=500).kind == "hnsw"


def test_ivf_adds_incrementally_compacts_and_retrains_when_outgrown():
    ids, vecs = dataset(20, 1200)
    index = VectorIndex.build(ids[:400], vecs[:400], config("ivf"))  # 20 cells trained on 400 vectors
    centroids = index._inner.quantizer.reconstruct_n(0, index._inner.nlist)
    index.add(ids[400:800], vecs[400:800])  # appended to the trained cells: nothing retrained
    assert index._inner.nlist == 20 and np.array_equal(index._inner.quantizer.reconstruct_n(0, 20), centroids)
    assert np.array_equal(index.ids(), np.sort(ids[:800]))
    _, found = index.search(vecs[400:410], 1)
    assert np.array_equal(found[:, 0], ids[400:410])
    np.testing.assert_array_equal(index.vectors(ids[500:503]), vecs[500:503])  # exact vectors kept

    index.remove(ids[:150])  # 19% tombstoned: kept, hidden from every search
    assert index._index.ntotal == 800 and len(index) == 650
    assert not np.isin(index.search(vecs[:150], 5)[1], ids[:150]).any()
    index.remove(ids[150:250])  # 31%: rebuilt without them
    assert index._index.ntotal == 550 and np.array_equal(index.ids(), np.sort(ids[250:800]))

    grown = VectorIndex.build(ids[:30], vecs[:30], config("ivf"))
    small_nlist = grown._inner.nlist
    grown.add(ids[30:], vecs[30:])  # 40x the training size: cells retrained for the new size
    assert small_nlist == 5 and grown._inner.nlist == 35 and len(grown) == 1200
    assert np.array_equal(grown.search(vecs[:20], 1)[1][:, 0], ids[:20])


def test_an_empty_ivf_index_trains_on_its_first_add_even_after_save_and_load(tmp_path):
    ids, vecs = dataset(21, 200)
    empty = VectorIndex.empty(DIM, config("ivf"))
    assert empty.kind == "ivf" and len(empty) == 0
    assert (empty.search(vecs[:2], 3)[1] == -1).all()
    empty.save(tmp_path / "chunks.faiss", {})
    loaded, _ = VectorIndex.load(tmp_path / "chunks.faiss")
    loaded.add(ids, vecs)
    assert loaded.kind == "ivf" and loaded._inner.nlist == 14 and len(loaded) == 200
    assert np.array_equal(loaded.search(vecs[:10], 1)[1][:, 0], ids[:10])


def test_auto_chooses_flat_then_hnsw_then_ivf_by_size():
    ids, vecs = dataset(22, 400)
    auto = config("auto", hnsw_threshold=100, ivf_threshold=300)
    assert [VectorIndex.build(ids[:n], vecs[:n], auto).kind for n in (99, 100, 299, 300)] == ["flat", "hnsw", "hnsw", "ivf"]
    assert [VectorIndex.empty(DIM, auto, expected_size=n).kind for n in (0, 150, 1000)] == ["flat", "hnsw", "ivf"]
    growing = VectorIndex.empty(DIM, auto)
    kinds = []
    for start in range(0, 400, 50):
        growing.add(ids[start:start + 50], vecs[start:start + 50])
        kinds.append(growing.kind)
    assert kinds == ["flat", "hnsw", "hnsw", "hnsw", "hnsw", "ivf", "ivf", "ivf"]
    assert np.array_equal(growing.ids(), np.sort(ids)) and np.array_equal(growing.vectors(ids), vecs)
    growing.remove(ids[:200])  # shrinking never converts back (compaction keeps the kind)
    assert growing.kind == "ivf" and np.array_equal(growing.ids(), np.sort(ids[200:]))
    skip_hnsw = config("auto", hnsw_threshold=100, ivf_threshold=100)
    assert VectorIndex.build(ids[:150], vecs[:150], skip_hnsw).kind == "ivf"


def test_ivf_scans_more_cells_under_a_selective_filter(monkeypatch):
    rng = np.random.default_rng(23)
    centres = unit(rng, 40)
    x = centres[rng.integers(40, size=4000)] + 0.15 * rng.standard_normal((4000, DIM)).astype(np.float32)
    vecs, ids = x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(4000, dtype=np.int64)
    index = VectorIndex.build(ids, vecs, config("ivf", ivf_nlist=64, ivf_nprobe=2, ivf_filter_probe_max=16))
    allowed = ids[::25]  # 4% of the index: 2 cells would hold ~5 allowed vectors, fewer than k
    monkeypatch.setattr(vector_index, "EXACT_MAX_IDS", 0)  # force the FAISS selector path
    monkeypatch.setattr(VectorIndex, "_exact", lambda *a: pytest.fail("IVF came back short"))
    queries = vecs[rng.integers(4000, size=20)]
    _, found = index.search(queries, 10, allowed_ids=allowed)
    want = brute_force(allowed, vecs[::25], queries, 10)[1]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, want)]) >= 0.9


def test_inputs_are_validated_and_normalised():
    ids, vecs = dataset(4, 20)
    raw = vecs * 3.0
    index = VectorIndex.build(ids, raw, config("flat"))
    assert np.allclose(np.linalg.norm(raw, axis=1), 3.0)  # caller's array untouched
    scores, found = index.search(raw[:3] * 5, 1)
    assert np.array_equal(found[:, 0], ids[:3]) and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="duplicates"):
        index.add(np.array([1, 1]), vecs[:2])
    with pytest.raises(ValueError, match="ids must lie"):
        index.add(np.array([-1]), vecs[:1])
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([1]), np.ones((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="non-zero"):
        index.add(np.array([1]), np.zeros((1, DIM), np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_search_matches_brute_force(kind):
    ids, vecs = dataset(5, 2000)
    queries = unit(np.random.default_rng(6), 30)
    index = VectorIndex.build(ids, vecs, config(kind))
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(ids, vecs, queries, 10)
    if kind == "flat":
        assert np.array_equal(found, want_ids) and np.allclose(scores, want_scores, atol=1e-5)
    else:
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, want_ids)])
        assert recall >= 0.95
    allowed = ids[::3]
    scores, found = index.search(queries, 10, allowed_ids=allowed)  # ~670 ids: the exact path
    assert np.array_equal(found, brute_force(allowed, vecs[::3], queries, 10)[1])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    ids=st.lists(st.integers(0, 2**63 - 2), min_size=1, max_size=60, unique=True),
    data=st.data(),
    k=st.integers(1, 20),
    exact_shortcut=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_filtered_search_never_leaks_and_fills_k(kind, ids, data, k, exact_shortcut, seed):
    ids = np.array(ids, dtype=np.int64)
    vecs = unit(np.random.default_rng(seed), len(ids), 8)
    removed = data.draw(st.sets(st.sampled_from(ids.tolist()), max_size=len(ids)))
    allowed = data.draw(st.none() | st.sets(st.sampled_from(ids.tolist()) | st.integers(0, 2**40)))
    index = VectorIndex.build(ids, vecs, config(kind, ivf_nprobe=1))  # IVF: one cell, often short -> exact rerun
    index.remove(np.array(sorted(removed), dtype=np.int64))
    live = ~np.isin(ids, list(removed))
    eligible = live if allowed is None else live & np.isin(ids, list(allowed))
    allowed_arr = None if allowed is None else np.array(sorted(allowed), dtype=np.int64)

    queries = unit(np.random.default_rng(seed + 1), 3, 8)
    limit = vector_index.EXACT_MAX_IDS if exact_shortcut else 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vector_index, "EXACT_MAX_IDS", limit)
        scores, found = index.search(queries, k, allowed_ids=allowed_arr)

    assert found.shape == scores.shape == (3, k)
    want_scores, want_ids = brute_force(ids[eligible], vecs[eligible], queries, k)
    n_expected = min(k, int(eligible.sum()))
    for row_scores, row_ids, best in zip(scores, found, want_scores):
        valid = row_ids >= 0
        assert valid.sum() == n_expected and valid[:n_expected].all()
        assert set(row_ids[valid]) <= set(ids[eligible])
        assert len(set(row_ids[valid])) == n_expected
        assert np.all(np.isneginf(row_scores[~valid]))
        assert np.all(np.diff(row_scores[valid]) <= 1e-6)
        if kind == "flat":
            assert np.allclose(row_scores[valid], best, atol=1e-5)


def test_hnsw_selective_filter_falls_back_to_exact(monkeypatch):
    ids, vecs = dataset(7, 3000)
    index = VectorIndex.build(ids, vecs, config("hnsw", hnsw_ef_search=10))
    allowed = ids[:40]
    queries = unit(np.random.default_rng(8), 20)
    monkeypatch.setattr(vector_index, "EXACT_MAX_IDS", 0)  # force the FAISS selector path
    fallbacks = []
    exact = VectorIndex._exact
    monkeypatch.setattr(VectorIndex, "_exact", lambda self, q, *a: fallbacks.append(len(q)) or exact(self, q, *a))
    _, found = index.search(queries, 10, allowed_ids=allowed)
    assert fallbacks, "setup: HNSW alone must come back short for some queries"
    assert np.array_equal(found, brute_force(allowed, vecs[:40], queries, 10)[1])


def test_empty_allowed_set_and_empty_index_skip_faiss(monkeypatch):
    ids, vecs = dataset(9, 50)
    index = VectorIndex.build(ids, vecs, config("flat"))
    monkeypatch.setattr(VectorIndex, "_search", lambda *a: pytest.fail("FAISS was called"))
    for idx, allowed in ((index, np.array([], np.int64)), (VectorIndex.empty(DIM), None)):
        scores, found = idx.search(vecs[:2], 4, allowed_ids=allowed)
        assert (found == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, kind):
    ids, vecs = dataset(10, 400)
    index = VectorIndex.build(ids, vecs, config(kind))
    index.remove(ids[:50])  # HNSW: saved with tombstones
    queries = unit(np.random.default_rng(11), 10)
    checksum = index.save(tmp_path / "chunks.faiss", {"model": "minilm", "version": 3})
    loaded, meta = VectorIndex.load(tmp_path / "chunks.faiss")
    assert meta == {"model": "minilm", "version": 3}
    assert (loaded.kind, loaded.dim, loaded.config) == (kind, DIM, index.config)
    assert np.array_equal(loaded.ids(), index.ids())
    for allowed in (None, ids[::2]):
        (got_s, got_i), (want_s, want_i) = loaded.search(queries, 10, allowed), index.search(queries, 10, allowed)
        assert np.array_equal(got_i, want_i) and np.array_equal(got_s, want_s)
    assert f'"sha256": "{checksum}"' in (tmp_path / "chunks.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.faiss", "chunks.json"]


def test_corrupt_or_missing_files_raise(tmp_path):
    path = tmp_path / "chunks.faiss"
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(path)
    ids, vecs = dataset(12, 100)
    VectorIndex.build(ids, vecs, config("flat")).save(path, {})
    good = path.read_bytes()

    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(IndexCorrupt, match="chunks.faiss"):
        VectorIndex.load(path)
    path.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])  # one flipped byte
    with pytest.raises(IndexCorrupt, match="chunks.faiss.*checksum"):
        VectorIndex.load(path)
    sidecar = json.loads((tmp_path / "chunks.json").read_text())
    for payload in (b"not a faiss index", faiss.serialize_index(faiss.IndexFlatL2(DIM)).tobytes()):
        path.write_bytes(payload)  # checksum consistent, contents not an index we wrote
        (tmp_path / "chunks.json").write_text(json.dumps({**sidecar, "sha256": hashlib.sha256(payload).hexdigest()}))
        with pytest.raises(IndexCorrupt, match="chunks.faiss"):
            VectorIndex.load(path)
    path.write_bytes(good)
    (tmp_path / "chunks.json").write_text("{not json")
    with pytest.raises(IndexCorrupt, match="chunks.json"):
        VectorIndex.load(path)
    (tmp_path / "chunks.json").unlink()
    with pytest.raises(IndexCorrupt, match="chunks.json"):
        VectorIndex.load(path)


def test_crash_mid_save_keeps_previous_file_loadable(tmp_path, monkeypatch):
    path = tmp_path / "chunks.faiss"
    ids, vecs = dataset(13, 100)
    VectorIndex.build(ids[:50], vecs[:50], config("flat")).save(path, {"run": 1})
    bigger = VectorIndex.build(ids, vecs, config("flat"))

    def crash(*args):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        bigger.save(path, {"run": 2})
    monkeypatch.undo()
    loaded, meta = VectorIndex.load(path)
    assert meta == {"run": 1} and np.array_equal(loaded.ids(), np.sort(ids[:50]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.faiss", "chunks.json"]  # no temp litter

    real_replace, calls = os.replace, []

    def crash_second(src, dst):  # dies between the two renames: detected, never silently mixed
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_second)
    with pytest.raises(OSError):
        bigger.save(path, {"run": 2})
    monkeypatch.undo()
    with pytest.raises(IndexCorrupt, match="interrupted save"):
        VectorIndex.load(path)


def test_lock_serialises_processes(tmp_path):
    child = textwrap.dedent(
        f"""
        import sys, time
        from kb_pipeline.indexing.locking import index_lock
        with index_lock({str(tmp_path)!r}):
            print("locked", flush=True)
            sys.stdin.read()  # hold until the parent closes our stdin
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(TimeoutError, match=r"\.lock.*pid"):
            with index_lock(tmp_path, timeout_s=0.2):
                pass
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    with index_lock(tmp_path, timeout_s=2) as lock_path:
        assert lock_path == tmp_path / ".lock"


def test_diff_ids():
    missing, extra = diff_ids(np.array([5, 1, 3]), np.array([3, 4, 5, 5]))
    assert missing.tolist() == [4] and extra.tolist() == [1]


@pytest.mark.parametrize("kind", KINDS)
def test_fingerprints_follow_the_stored_vectors_through_save_and_load(tmp_path, kind):
    ids, vecs = dataset(14, 300)
    raw = vecs.copy()
    raw[::7] *= 2.5  # rows that add() normalises: the fingerprint is of what FAISS stores
    index = VectorIndex.build(ids, raw, config(kind))
    order = np.argsort(ids)
    want = vector_index.fingerprints(vector_index.index_form(raw))[order]
    assert np.array_equal(index.fingerprints(), want)
    by_id = dict(zip(ids[order].tolist(), want.tolist()))
    alone = vector_index.fingerprints(vector_index.index_form(raw[::7]))  # a subset, batched differently
    assert [by_id[i] for i in ids[::7].tolist()] == alone.tolist()
    assert len(set(want.tolist())) == len(ids)

    index.add(ids[:1], vecs[1:2])  # same id, another vector: only its fingerprint changes
    changed = index.fingerprints()
    at = np.searchsorted(index.ids(), ids[0])
    assert changed[at] != want[at] and np.array_equal(np.delete(changed, at), np.delete(want, at))
    index.save(tmp_path / "chunks.faiss", {})
    loaded, _ = VectorIndex.load(tmp_path / "chunks.faiss")
    assert not loaded.legacy_file and loaded._fps is not None  # read from the sidecar, not recomputed
    assert np.array_equal(loaded.fingerprints(), changed)
    np.testing.assert_array_equal(loaded.vectors(ids[:3]), index.vectors(ids[:3]))
    with pytest.raises(KeyError):
        loaded.vectors(np.array([7], dtype=np.int64))


def test_a_rows_index_form_does_not_depend_on_its_batch():
    vecs = unit(np.random.default_rng(15), 20)
    raw = vecs.copy()
    raw[3] *= 4.0  # one row far from unit length must not change how the others are stored
    alone = vector_index.index_form(vecs[5:6])
    batched = vector_index.index_form(raw)[5:6]
    assert alone.tobytes() == batched.tobytes()
    assert vector_index.fingerprints(alone)[0] == vector_index.fingerprints(batched)[0]
    assert vector_index.index_form(np.zeros((0, 0), np.float32)).shape[0] == 0


def test_diff_vectors_names_missing_extra_and_stale():
    have_ids, have_fps = np.array([1, 2, 3, 5]), np.array([10, 20, 30, 50], dtype=np.uint64)
    want_ids, want_fps = np.array([2, 3, 4, 5]), np.array([20, 31, 40, 50], dtype=np.uint64)
    missing, extra, stale = vector_index.diff_vectors(have_ids, have_fps, want_ids, want_fps)
    assert (missing.tolist(), extra.tolist(), stale.tolist()) == ([4], [1], [3])


def test_load_checks_the_recorded_checksum_and_reads_old_sidecars(tmp_path):
    path = tmp_path / "chunks.faiss"
    ids, vecs = dataset(16, 50)
    index = VectorIndex.build(ids, vecs, config("flat"))
    checksum = index.save(path, {})
    VectorIndex.load(path, checksum=checksum)
    with pytest.raises(IndexCorrupt, match="chunks.faiss.*recorded for this build"):
        VectorIndex.load(path, checksum="0" * 64)

    sidecar = json.loads((tmp_path / "chunks.json").read_text())
    old = {k: v for k, v in sidecar.items() if k not in ("fingerprint", "fingerprints")} | {"format": 1}
    (tmp_path / "chunks.json").write_text(json.dumps(old))
    loaded, _ = VectorIndex.load(path)  # written before fingerprints: loads, says so, computes them from content
    assert loaded.legacy_file and np.array_equal(loaded.fingerprints(), index.fingerprints())
    (tmp_path / "chunks.json").write_text(json.dumps(sidecar | {"fingerprints": sidecar["fingerprints"][:-8]}))
    with pytest.raises(IndexCorrupt, match="chunks.json"):
        VectorIndex.load(path)


def test_a_full_disk_mid_save_leaves_the_old_files_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "chunks.faiss"
    ids, vecs = dataset(17, 100)
    checksum = VectorIndex.build(ids[:50], vecs[:50], config("flat")).save(path, {"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_write = vector_index._write_file

    def full_disk(target, data):
        real_write(target, bytes(memoryview(data))[: len(data) // 3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vector_index, "_write_file", full_disk)
    with pytest.raises(IndexWriteError) as caught:
        VectorIndex.build(ids, vecs, config("flat")).save(path, {"run": 2})
    assert str(caught.value) == (f"could not save the vector index {path}: No space left on device (errno 28); "
                                 "the previous index stays in use")
    assert caught.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    loaded, meta = VectorIndex.load(path, checksum=checksum)
    assert meta == {"run": 1} and len(loaded) == 50
