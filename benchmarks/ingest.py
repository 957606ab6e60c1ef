"""Ingest throughput: first run and unchanged re-run, SQLite and Postgres, measured in one process.

    python benchmarks/ingest.py                 # 5,000 generated Markdown docs, both backends
    python benchmarks/ingest.py --docs 1000 --backend sqlite --json

Targets (issue 2): >= 500 docs/s first run, >= 5,000 docs/s unchanged re-run, on SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

WORDS = (
    "policy employee access review quarterly budget vendor contract security incident release deploy service "
    "database replica customer support escalation invoice payment approval manager request holiday leave travel "
    "expense audit compliance privacy retention backup restore cluster latency on-call runbook rotation training "
    "onboarding laptop password account report forecast revenue pipeline renewal discount pricing legal clause "
    "liability warranty termination notice schedule meeting owner team office process checklist template"
).split()
CATEGORIES = ["hr", "it-security", "engineering", "finance", "legal", "sales-support"]


def sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(8, 18))
    return " ".join(words).capitalize() + "."


def document(rng: random.Random, i: int) -> str:
    title = " ".join(rng.choices(WORDS, k=4)).title()
    sections = []
    for s in range(rng.randint(2, 4)):
        paragraphs = [" ".join(sentence(rng) for _ in range(rng.randint(3, 6))) for _ in range(rng.randint(1, 3))]
        sections.append(f"## Section {s + 1}\n\n" + "\n\n".join(paragraphs))
    body = f"# {title}\n\n" + "\n\n".join(sections) + "\n"
    if i % 4 == 3:  # a quarter carry no front matter, as in real folders
        return body
    tags = ", ".join(sorted(set(rng.choices(WORDS, k=3))))
    return (f"---\ntitle: {title}\ncategory: {rng.choice(CATEGORIES)}\ntags: [{tags}]\n"
            f"summary: {sentence(rng)}\n---\n" + body)


def generate(root: Path, n: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    words = 0
    for i in range(n):
        folder = root / CATEGORIES[i % len(CATEGORIES)]
        folder.mkdir(parents=True, exist_ok=True)
        text = document(rng, i)
        words += len(text.split())
        (folder / f"doc-{i:05d}.md").write_text(text, encoding="utf-8")
    return words


def postgres_database(admin_url: str) -> str:
    import sqlalchemy as sa

    name = f"kb_bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres(admin_url: str, url: str) -> None:
    import sqlalchemy as sa

    from kb_pipeline.store.db import dispose_engines

    dispose_engines()
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.engine.make_url(url).database}" WITH (FORCE)'))
    engine.dispose()


def run_backend(name: str, url: str, home: Path, corpus: Path, n: int) -> dict:
    from kb_pipeline.config import Settings
    from kb_pipeline.ingest.pipeline import ingest
    from kb_pipeline.store.db import upgrade

    settings = Settings.from_env().with_(home=home, database_url=url)
    upgrade(url)
    result = {"backend": name}
    for label in ("first", "unchanged"):
        started = time.perf_counter()
        report = ingest(settings, [corpus])
        seconds = time.perf_counter() - started
        counts = report.as_dict()
        result[label] = {"seconds": round(seconds, 3), "docs_per_s": round(n / seconds, 1),
                         "added": counts["added"], "unchanged": counts["unchanged"], "errors": counts["errors"]}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "KB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        words = generate(corpus, args.docs)
        if args.backend in ("sqlite", "both"):
            results.append(run_backend("sqlite", f"sqlite:///{tmp / 'kb.sqlite3'}", tmp / "home-sqlite", corpus, args.docs))
        if args.backend in ("postgres", "both"):
            url = postgres_database(args.postgres_url)
            try:
                results.append(run_backend("postgres", url, tmp / "home-pg", corpus, args.docs))
            finally:
                drop_postgres(args.postgres_url, url)

    summary = {"docs": args.docs, "mean_words": round(words / args.docs), "cpus": os.cpu_count(), "results": results,
               "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.docs} generated Markdown docs, {summary['mean_words']} words each on average, {os.cpu_count()} CPUs")
    print(f"{'backend':<10} {'run':<10} {'seconds':>8} {'docs/s':>9} {'target':>8}  result")
    targets = {"first": 500, "unchanged": 5000}
    for r in results:
        for label in ("first", "unchanged"):
            row = r[label]
            verdict = ("PASS" if row["docs_per_s"] >= targets[label] else "FAIL") if r["backend"] == "sqlite" else ""
            print(f"{r['backend']:<10} {label:<10} {row['seconds']:>8.2f} {row['docs_per_s']:>9.1f} "
                  f"{targets[label]:>8}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
