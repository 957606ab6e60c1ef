"""Closing the loop on BBC News: does reviewing the least certain documents first beat reviewing at random?

    OMP_NUM_THREADS=1 python benchmarks/review_loop.py                # default sizes (~10-15 min on 2 busy cores)
    python benchmarks/review_loop.py --quick                          # a 2-3 minute smoke run
    python benchmarks/review_loop.py --json                           # one JSON object on stdout

A KB is built from BBC articles (benchmarks/bbc_data.py, deterministic in --seed): --start articles with
their topic in front matter (the small labelled share), --pool articles without a category (what a person
could review), and --test held-out articles without a category, which are never reviewed, never trained on
and never queued (they get no stored prediction), only scored. Then, for each strategy, from a copy of the
same KB:

  round 0: `classify` is trained by the library (kb_pipeline.training.service.train_tasks, as `kb train
           classify` does, on the one loaded backbone) and scored on the test articles (once: both
           strategies start from this model and its stored pool predictions);
  round r: --per-round pool documents are reviewed: the gold topic stands in for the reviewer and is recorded
           through kb_pipeline.store.reviews.set_labels (gold with provenance, exactly as `kb review set`);
           `uncertainty` takes the head of kb_pipeline.review.review_queue (abstained first, then the smallest
           margin between the top two categories), computed from the predictions of the previous round's model
           stored as `kb enrich` stores them; `random` draws the same number at random from the unreviewed pool.
           The classifier is retrained on front-matter + reviewed labels and scored again.

Scores are macro-F1 (and accuracy) of the model's best category on the test articles, abstained or not (the
abstain threshold changes coverage, not which topic is best). The model scored each round is the version that
round trained, whether or not the promotion gate made it active (the gate compares on a few validation
documents; the benchmark asks what the labels bought). The summary line answers the target: how many reviews
uncertainty-first needed to reach the random curve's final score, against random's total.

Speed: the backbone's lower layers are frozen (adapters sit in the top ones), so their outputs for each chunk
are computed once for the whole run (kb_pipeline.backbone.forward.TrunkCache, --cache-mb) and every
round's predictions run only the adapted top layers. Training runs exactly as `kb train` runs it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/review_loop.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402,F401  (offline: sets HF_HUB_OFFLINE and friends before HF imports)
from benchmarks.bbc_data import LABELS, load_bbc, stratified_sample  # noqa: E402

STRATEGIES = ("uncertainty", "random")
REVIEWER = "benchmark-oracle"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_corpus(folder: Path, *, pool: int, test: int, start: int, seed: int) -> dict[str, tuple[str, str]]:
    """Markdown files named by position (the name never gives the topic away); uri -> (role, topic)."""
    import yaml

    docs = stratified_sample(load_bbc(), pool + test + start, seed)
    rng = random.Random(f"review-loop|{seed}")
    rng.shuffle(docs)
    test_docs = stratified_sample(docs, test, seed + 1)
    rest = [d for d in docs if d not in test_docs]
    start_docs = stratified_sample(rest, start, seed + 2)
    roles = {id(d): "test" for d in test_docs} | {id(d): "start" for d in start_docs}
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, doc in enumerate(docs):
        role = roles.get(id(doc), "pool")
        front = {"title": doc.headline} | ({"category": doc.label} if role == "start" else {})
        text = yaml.safe_dump(front, allow_unicode=True, sort_keys=False, width=10_000)
        name = f"bbc-{i:04d}.md"
        (folder / name).write_text(f"---\n{text}---\n{doc.body}\n", encoding="utf-8")
        truth[name] = (role, doc.label)
    return truth


def doc_inputs(session, ids):
    """DocInputs (title, text, stored chunks) of these documents, as enrichment reads them."""
    from sqlalchemy import select

    from kb_pipeline.store.schema import Chunk, Document
    from kb_pipeline.tasks.spec import ChunkText, DocInput

    chunks: dict[int, list] = {}
    query = select(Chunk.document_id, Chunk.text, Chunk.char_start, Chunk.char_end).where(Chunk.document_id.in_(ids))
    for doc_id, text, start, end in session.execute(query.order_by(Chunk.document_id, Chunk.ordinal)):
        chunks.setdefault(doc_id, []).append(ChunkText(text, start, end))
    rows = session.execute(select(Document.id, Document.version, Document.title, Document.text).where(Document.id.in_(ids)))
    return {d: (v, DocInput(title, text, chunks.get(d, []))) for d, v, title, text in rows}


def train_and_score(settings, backbone, trunk, ids, reviewed: set[int], predict_pool: bool, epochs: int):
    """Train classify as `kb train classify` does; score it on the test articles; store its pool predictions
    (as `kb enrich` stores them: the review queue reads these rows). Returns (outcome, macro-F1, accuracy, abstained)."""
    from kb_pipeline.backbone.adapters import AdapterSet
    from kb_pipeline.backbone.forward import TrunkCache
    from kb_pipeline.enrich.shared_pass import TaskModels
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.schema import AdapterVersion
    from kb_pipeline.tasks.registry import get_task
    from kb_pipeline.training.metrics import accuracy, macro_f1
    from kb_pipeline.training.service import train_tasks

    Session = session_factory(settings)
    started = time.perf_counter()
    (outcome,) = train_tasks(settings, ["classify"], epochs=epochs, backbone=backbone)
    outcome.train_seconds = time.perf_counter() - started
    if not outcome.trained:
        raise SystemExit(f"classify did not train: {outcome.message}")
    with Session() as session:
        path = session.get(AdapterVersion, outcome.version).path
    pool, test = ids["pool"], ids["test"]
    wanted = list(test) + ([d for d in pool if d not in reviewed] if predict_pool else [])
    models = TaskModels(AdapterSet(backbone))
    models.adapters.trunk = trunk  # the frozen lower layers' outputs, computed once for the whole run
    try:
        models.add("classify", outcome.version, path)
        with Session() as session:
            inputs = doc_inputs(session, wanted)
        order = [d for d in wanted if d in inputs]
        labels = dict(zip(order, models.heads["classify"].predict(models.adapters, [inputs[d][1] for d in order])))
    finally:
        models.adapters.trunk = TrunkCache()  # close() clears the cache it holds: keep the shared one
        models.adapters.close()
    stored = [(d, inputs[d][0], labels[d]) for d in order if d in pool]
    if stored:
        with Session.begin() as session:
            get_task("classify").outputs.save(session, stored, outcome.version)
    truth = [test[d] for d in test]
    guess = [labels[d].category for d in test]
    abstained = sum(bool(getattr(labels[d], "abstained", False)) for d in test)
    return outcome, macro_f1(truth, guess, LABELS), accuracy(truth, guess), abstained


def point(round_: int, reviewed: set[int], outcome, f1: float, acc: float, abstained: int, seconds: float, args) -> dict:
    return {
        "round": round_, "reviews": len(reviewed), "labelled": args.start + len(reviewed),
        "macro_f1": round(f1, 4), "accuracy": round(acc, 4), "test_abstained": abstained,
        "version": outcome.version, "promoted": outcome.status == "active", "seconds": round(seconds, 1),
        "train_seconds": round(outcome.train_seconds, 1),
    }


def run_strategy(strategy: str, base: Path, work: Path, backbone, trunk, ids, first: dict, args) -> list[dict]:
    """One curve from a copy of the base KB (round 0 trained there): (review, retrain, score) x rounds."""
    from kb_pipeline.config import Settings
    from kb_pipeline.review import review_queue
    from kb_pipeline.store import reviews
    from kb_pipeline.store.db import session_factory

    home = work / strategy
    shutil.copytree(base, home)
    settings = Settings.from_env().with_(home=home, database_url=f"sqlite:///{home / 'kb.sqlite3'}")
    Session = session_factory(settings)
    pool = ids["pool"]
    rng = random.Random(f"review-loop|{args.seed}|random")
    reviewed: set[int] = set()
    curve = [first]
    for round_ in range(1, args.rounds + 1):
        started = time.perf_counter()
        with Session.begin() as session:
            if strategy == "uncertainty":
                chosen = [item["id"] for item in review_queue(session, None, args.per_round, operator=True)]
            else:
                chosen = rng.sample(sorted(set(pool) - reviewed), args.per_round)
            for doc_id in chosen:  # the gold topic stands in for the person
                reviews.set_labels(session, doc_id, REVIEWER, category=pool[doc_id])
        reviewed.update(chosen)
        outcome, f1, acc, abstained = train_and_score(
            settings, backbone, trunk, ids, reviewed, strategy == "uncertainty", args.epochs)
        curve.append(point(round_, reviewed, outcome, f1, acc, abstained, time.perf_counter() - started, args))
        curve[-1]["reviewed_topics"] = {t: sum(pool[d] == t for d in chosen) for t in LABELS}
        log(f"{strategy:>11} round {round_}: {len(reviewed):3d} reviews, macro-F1 {f1:.3f}, accuracy {acc:.3f} "
            f"({curve[-1]['seconds']:.0f} s, training {curve[-1]['train_seconds']:.0f} s)")
    return curve


def reviews_to_reach(curve: list[dict], score: float) -> int | None:
    return next((p["reviews"] for p in curve if p["macro_f1"] >= score), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--start", type=int, default=10, help="articles labelled in front matter at the start")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-mb", type=int, default=1536, help="memory for the frozen lower layers' outputs")
    parser.add_argument("--quick", action="store_true", help="pool 60, test 40, start 10, 2 rounds of 10, 1 epoch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.pool, args.test, args.start, args.rounds, args.per_round, args.epochs = 60, 40, 10, 2, 10, 1
    if args.rounds * args.per_round > args.pool:
        parser.error("--rounds x --per-round is more than the pool")

    import torch

    torch.set_num_threads(args.threads)
    from kb_pipeline.backbone.forward import TrunkCache
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.config import Settings
    from kb_pipeline.ingest.pipeline import ingest
    from kb_pipeline.store.db import dispose_engines, session_factory, upgrade
    from kb_pipeline.store.schema import Document

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kb-review-loop-") as tmp:
        work = Path(tmp)
        truth = write_corpus(work / "corpus", pool=args.pool, test=args.test, start=args.start, seed=args.seed)
        base = work / "base"
        settings = Settings.from_env().with_(home=base, database_url=f"sqlite:///{base / 'kb.sqlite3'}")
        base.mkdir()
        upgrade(settings.database_url)
        report = ingest(settings, [work / "corpus"])
        log(f"ingested {report.counts.get('added', 0)} articles ({time.perf_counter() - started:.0f} s)")
        ids: dict[str, dict[int, str]] = {"start": {}, "pool": {}, "test": {}}
        with session_factory(settings)() as session:
            for doc_id, uri in session.query(Document.id, Document.uri):
                role, topic = truth[Path(uri).name]
                ids[role][doc_id] = topic
        backbone = load_backbone(settings.backbone, settings.models_dir)
        trunk = TrunkCache(budget_bytes=args.cache_mb * 1024 * 1024)
        round_started = time.perf_counter()
        outcome, f1, acc, abstained = train_and_score(settings, backbone, trunk, ids, set(), True, args.epochs)
        first = point(0, set(), outcome, f1, acc, abstained, time.perf_counter() - round_started, args)
        log(f"       both round 0:   0 reviews, macro-F1 {f1:.3f}, accuracy {acc:.3f} ({first['seconds']:.0f} s)")
        dispose_engines()
        curves = {s: run_strategy(s, base, work, backbone, trunk, ids, first, args) for s in STRATEGIES}
        dispose_engines()
    final_random = curves["random"][-1]["macro_f1"]
    needed = reviews_to_reach(curves["uncertainty"], final_random)
    total = curves["random"][-1]["reviews"]
    result = {
        "command": "python benchmarks/review_loop.py " + " ".join(sys.argv[1:]),
        "sizes": {"pool": args.pool, "test": args.test, "start": args.start, "rounds": args.rounds,
                  "per_round": args.per_round, "epochs": args.epochs, "seed": args.seed},
        "backbone": settings.backbone,
        "curves": curves,
        "random_final_macro_f1": final_random,
        "uncertainty_reviews_to_reach_it": needed,
        "random_reviews": total,
        "target_met": needed is not None and needed <= total / 2,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"\nBBC review loop: start {args.start} labelled, pool {args.pool}, test {args.test}, "
          f"{args.rounds} rounds of {args.per_round}, {args.epochs} epochs, seed {args.seed}")
    print(f"{'reviews':>8} | {'uncertainty F1':>14} {'acc':>6} | {'random F1':>10} {'acc':>6}")
    for u, r in zip(curves["uncertainty"], curves["random"]):
        print(f"{u['reviews']:>8} | {u['macro_f1']:>14.3f} {u['accuracy']:>6.3f} | {r['macro_f1']:>10.3f} {r['accuracy']:>6.3f}")
    reach = f"after {needed} reviews" if needed is not None else "never"
    print(f"random's final macro-F1 {final_random:.3f} ({total} reviews); uncertainty-first reaches it {reach}: "
          f"target (<= {total // 2} reviews) {'MET' if result['target_met'] else 'NOT MET'}; {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
