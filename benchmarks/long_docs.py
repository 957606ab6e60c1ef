"""`kb eval` on long, structured documents built from BBC News: does the classifier read the whole document?

    python benchmarks/long_docs.py --reports 150 --out /tmp/long-eval          # ~150 reports, ~20 min on 2 cores
    python benchmarks/long_docs.py --reports 150 --opaque-titles --out /tmp/long-opaque

Each report joins 3-4 BBC articles of one topic (its `category`) with 0-2 articles of other topics, in a
random order (a minor topic may come first), each under a `## headline` section heading and cut to at most
~260 words: ~400-1500 words in all. Its `tags` are the topics it covers (`covers-sport`, ...), so tagging
needs the whole document too; its `summary` is the first main-topic headline. Titles are informative
(`Report: <first main-topic headline>`) or, with --opaque-titles, file ids. Articles are used once, so no
text is shared between training and held-out reports.

The script runs the real `kb eval` (benchmarks/bbc.py's runner) and prints the classify adapter beside the
TF-IDF + LR and majority baselines of the same run: category accuracy / macro-F1, tags micro / macro-F1,
calibration and the abstain point.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bbc import run_kb_eval  # noqa: E402
from benchmarks.bbc_data import LABELS, load_bbc  # noqa: E402

MAX_ARTICLE_WORDS = 260


def _cut(body: str, limit: int = MAX_ARTICLE_WORDS) -> str:
    """The article's paragraphs up to ~limit words (whole paragraphs; at least the first)."""
    out, words = [], 0
    for paragraph in [p.strip() for p in body.split("\n") if p.strip()]:
        n = len(paragraph.split())
        if out and words + n > limit:
            break
        out.append(paragraph)
        words += n
    return "\n\n".join(out)


def build_reports(n: int, seed: int = 0) -> list[dict]:
    """n reports (balanced over topics) from disjoint articles: {title, category, tags, summary, body}."""
    rng = random.Random(f"long-docs|{seed}")
    pools = {label: [d for d in load_bbc() if d.label == label] for label in LABELS}
    for pool in pools.values():
        rng.shuffle(pool)
    reports = []
    for i in range(n):
        main = LABELS[i % len(LABELS)]
        k_main, k_other = rng.randint(3, 4), rng.choice((0, 1, 1, 2))
        k_other = min(k_other, k_main - 1)  # the main topic keeps the majority of sections
        others = rng.sample([label for label in LABELS if label != main], k_other)
        if len(pools[main]) < k_main or any(not pools[o] for o in others):
            break
        articles = [pools[main].pop() for _ in range(k_main)] + [pools[o].pop() for o in others]
        first_main = articles[0]
        rng.shuffle(articles)
        sections = [f"## {a.headline.strip()}\n\n{_cut(a.body)}" for a in articles]
        reports.append({
            "title": f"Report: {first_main.headline.strip()}",
            "category": main,
            "tags": sorted({f"covers-{a.label}" for a in articles}),
            "summary": first_main.headline.strip(),
            "body": "\n\n".join(sections),
        })
    return reports


def write_corpus(folder: Path, n: int, seed: int, opaque_titles: bool) -> dict:
    import yaml

    reports = build_reports(n, seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = []
    for i, r in enumerate(reports):
        title = f"report-{i:05d}" if opaque_titles else r["title"]
        front = yaml.safe_dump({"title": title, "category": r["category"], "tags": r["tags"], "summary": r["summary"]},
                               allow_unicode=True, sort_keys=False, width=10_000)
        (folder / f"long-{i:04d}.md").write_text(f"---\n{front}---\n# {title}\n\n{r['body']}\n", encoding="utf-8")
        words.append(len(r["body"].split()))
    words.sort()
    return {"reports": len(reports), "median_words": words[len(words) // 2] if words else 0,
            "min_words": words[0] if words else 0, "max_words": words[-1] if words else 0}


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def lines(m: dict) -> list[str]:
    c = m["classification"]
    out = ["| system | accuracy | macro-F1 | tags micro-F1 | tags macro-F1 |", "| --- | --- | --- | --- | --- |"]
    for entry in [c.get("model")] + list(c["baselines"].values()):
        if entry:
            tags = entry.get("tags") or {}
            out.append(f"| {entry['label']} | {_f(entry['category']['accuracy'])} | {_f(entry['category']['macro_f1'])} "
                       f"| {_f(tags.get('micro_f1'))} | {_f(tags.get('macro_f1'))} |")
    model = c.get("model") or {}
    confidence = model.get("confidence")
    if confidence:
        chosen = confidence.get("chosen") or {}
        out.append(f"\ncategory ECE {_f(confidence['ece'])}; abstain point {_f(chosen.get('threshold'))}: "
                   f"coverage {_f(chosen.get('coverage'))}, accuracy {_f(chosen.get('accuracy'))}")
    validation = m.get("training", {}).get("classify", {}).get("validation", {})
    if validation:
        out.append(f"classify adapter on its validation documents: macro-F1 {_f(validation.get('macro_f1'))}, lexical "
                   f"weight {validation.get('lexical_weight', 'n/a')} (tags {validation.get('lexical_tag_weight', 'n/a')}), "
                   f"temperature {_f(validation.get('temperature'))}, tags never predicted "
                   f"{validation.get('tags_never_predicted', 'n/a')}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=150, help="reports to build (balanced over the 5 topics)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs per task (default: kb train's)")
    parser.add_argument("--out", type=Path, default=Path("long-eval"))
    parser.add_argument("--corpus", type=Path, default=None, help="keep the Markdown files here")
    parser.add_argument("--opaque-titles", action="store_true", help="titles become file ids (report-00012)")
    parser.add_argument("--json", action="store_true", help="print metrics.json on stdout instead of the table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="long-corpus-") as tmp:
        corpus = (args.corpus or Path(tmp) / "long").resolve()
        info = write_corpus(corpus, args.reports, args.seed, args.opaque_titles)
        print(f"{info['reports']} long reports written to {corpus} (words: median {info['median_words']}, "
              f"{info['min_words']}-{info['max_words']})", file=sys.stderr, flush=True)
        seconds = run_kb_eval(corpus, args.out, args.epochs, [])
    metrics = json.loads((args.out / "metrics.json").read_text())
    if args.json:
        print(json.dumps(metrics | {"benchmark": {"corpus": info, "wall_seconds": round(seconds, 1)}}))
        return
    split = metrics["split"]
    print(f"Long BBC reports{' (opaque titles)' if args.opaque_titles else ''}: {info['reports']} reports, median "
          f"{info['median_words']} words; kb eval held out {split['test']} (train {split['train']}); "
          f"wall time {seconds / 60:.1f} min\n")
    print("\n".join(lines(metrics)))
    print(f"\nreport: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
