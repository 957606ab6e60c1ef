"""Search latency of `VectorIndex.search` (k=10, one query per call) on synthetic embeddings.

    python benchmarks/search_latency.py                      # 10k and 100k vectors, flat and HNSW
    python benchmarks/search_latency.py --sizes 10000 --kinds flat --data uniform --json
    python benchmarks/search_latency.py --cache-dir /tmp/idx  # reuse built indexes (HNSW 100k takes minutes)

Vectors are 384-d unit vectors (the MiniLM dimension). --data clustered (default): n/100 random
centroids, each vector its centroid plus isotropic noise of the same norm (cosine ~0.7 to its
centroid), queries a noisy copy of a random stored vector. --data uniform: random directions, the
worst case for HNSW recall (no structure to exploit). Every (size, kind) index is built once (or
loaded from --cache-dir); each filter then runs the same queries through `search`, timing each call on its own
(after a few warm-up calls), so the numbers include the per-call work a filter adds (deduplicating
the allowed ids, building the FAISS IDSelectorBatch, any exact fallback). Filters:
  none   unfiltered
  30%    a fixed random 30% of the ids (FAISS search with an IDSelectorBatch)
  1%     a fixed random 1% of the ids (brute force when <= EXACT_MAX_IDS ids, else as 30%)
recall@10 is against the flat (exact) results for the same queries and filter.
Target: p95 <= 30 ms at 100k vectors. The machine's load is printed because a busy CPU shows up
directly in the tail latencies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from kb_pipeline.indexing.vector_index import EXACT_MAX_IDS, IndexConfig, VectorIndex

DIM = 384
K = 10
FILTERS = {"none": None, "30%": 0.30, "1%": 0.01}


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def time_searches(index: VectorIndex, queries: np.ndarray, allowed: np.ndarray | None) -> tuple[list, np.ndarray]:
    for q in queries[:5]:  # warm-up: first-call allocations, caches
        index.search(q[None], K, allowed)
    latencies, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, ids = index.search(q[None], K, allowed)
        latencies.append((time.perf_counter() - start) * 1000)
        found.append(ids[0])
    return latencies, np.array(found)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for f, e in zip(found, exact)]))


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(rng: np.random.Generator, n: int, n_queries: int, data: str) -> tuple[np.ndarray, np.ndarray]:
    if data == "uniform":
        return unit_vectors(rng, n), unit_vectors(rng, n_queries)
    centroids = unit_vectors(rng, max(1, n // 100))
    vectors = normalise(centroids[rng.integers(len(centroids), size=n)] + unit_vectors(rng, n))
    queries = normalise(vectors[rng.integers(n, size=n_queries)] + 0.5 * unit_vectors(rng, n_queries))
    return vectors, queries


def build(ids: np.ndarray, vectors: np.ndarray, kind: str, cache: Path | None) -> tuple[VectorIndex, float]:
    """Build (timed), or load a previous build of the same data from ``cache`` (its build time reused)."""
    key = hashlib.sha256(ids.tobytes() + vectors[:100].tobytes()).hexdigest()[:16]
    path = cache / f"{kind}-{len(ids)}-{key}.faiss" if cache else None
    if path and path.exists():
        index, meta = VectorIndex.load(path)
        return index, meta["build_s"]
    start = time.perf_counter()
    index = VectorIndex.build(ids, vectors, IndexConfig(kind=kind))
    build_s = time.perf_counter() - start
    if path:
        index.save(path, {"build_s": build_s})
    return index, build_s


def run(sizes: list[int], kinds: list[str], data: str, n_queries: int, seed: int, cache: Path | None, log) -> list:
    rows = []
    for n in sizes:
        rng = np.random.default_rng(seed)
        ids = rng.choice(2**40, size=n, replace=False).astype(np.int64)
        vectors, queries = make_data(rng, n, n_queries, data)
        allowed = {name: None if share is None else rng.choice(ids, int(n * share), replace=False)
                   for name, share in FILTERS.items()}
        reference = VectorIndex.build(ids, vectors, IndexConfig(kind="flat"))  # exact top-k, for recall
        exact = {name: reference.search(queries, K, subset)[1] for name, subset in allowed.items()}
        for kind in kinds:
            index, build_s = build(ids, vectors, kind, cache)
            log(f"built {kind} n={n} in {build_s:.1f}s")
            for name, subset in allowed.items():
                latencies, found = time_searches(index, queries, subset)
                rows.append({
                    "n": n, "kind": kind, "build_s": round(build_s, 2), "filter": name,
                    "allowed": n if subset is None else len(subset),
                    "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                    "p95_ms": round(float(np.percentile(latencies, 95)), 2),
                    "recall@10": round(recall(found, exact[name]), 3),
                })
                log(f"  {name:>4}: p50 {rows[-1]['p50_ms']} ms, p95 {rows[-1]['p95_ms']} ms")
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'n':>7} {'kind':>5} {'build_s':>8} {'filter':>6} {'allowed':>8} {'p50_ms':>7} {'p95_ms':>7} "
            f"{'recall@10':>9}  p95<=30ms")
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = "yes" if r["p95_ms"] <= 30 else "NO"
        lines.append(
            f"{r['n']:>7} {r['kind']:>5} {r['build_s']:>8.1f} {r['filter']:>6} {r['allowed']:>8} "
            f"{r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['recall@10']:>9.3f}  {ok}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--kinds", nargs="+", choices=["flat", "hnsw"], default=["flat", "hnsw"])
    parser.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    parser.add_argument("--cache-dir", type=Path, help="save built indexes here and reuse them on later runs")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout; progress on stderr")
    args = parser.parse_args()
    machine = {
        "cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()], "exact_max_ids": EXACT_MAX_IDS, "data": args.data,
    }
    if args.cache_dir:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows = run(args.sizes, args.kinds, args.data, args.queries, args.seed, args.cache_dir, log)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=2))
    else:
        print(f"machine: {machine}")
        print(table(rows))


if __name__ == "__main__":
    main()
