"""Postgres keyword search, side by side in one run: ranking from the stored tsvector (migration 0008) vs
re-parsing each matching chunk's text (the GIN expression index of 0003, what every query did before).

    python benchmarks/postgres_keyword.py                       # 100k chunks, 100 BBC headlines
    python benchmarks/postgres_keyword.py --chunks 20000 --queries 50 --json

A scratch database on the test server (KB_TEST_POSTGRES_URL, default postgres@127.0.0.1:5432) is migrated to 0007
and filled, then upgraded to head, timed: what migration 0008 costs an existing KB (it rewrites `chunks` to store
each tsvector). 0003's expression index is then put back so both query forms have their index. Chunks are real BBC body pieces of
150 words, drawn with replacement (10 per document; 30% of documents restricted to one of 5 groups), so the word
statistics are real. Each query (a headline) runs through both forms in turn, anonymous and as a one-group user:
  stored  kb's `keyword_hits` (ts_rank_cd over chunks.text_tsv);
  parsed  the same SQL with to_tsvector('english', chunks.text) in place of the column (the pre-0008 query).
Both return the same chunks in the same order (checked per query); the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402,F401  (offline: sets HF_HUB_OFFLINE and friends before HF imports)
from benchmarks.bbc_data import load_bbc  # noqa: E402
from benchmarks.report import versions  # noqa: E402

ADMIN_URL = os.environ.get("KB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PACKAGES = ("kb-pipeline", "sqlalchemy", "psycopg")


def parsed_hits(session, words, filters, limit):
    """The pre-0008 query: the tsvector computed from the text, for the match (via the expression index) and the rank."""
    from sqlalchemy import func, select

    from kb_pipeline.search.filters import allowed_condition
    from kb_pipeline.store.schema import Chunk, Document

    tsquery = func.to_tsquery("english", " | ".join(f"'{w}'" for w in words))
    vector = func.to_tsvector("english", Chunk.text)
    score = func.ts_rank_cd(vector, tsquery)
    rows = session.execute(
        select(Chunk.id, Chunk.document_id, score)
        .join(Document, Document.id == Chunk.document_id)
        .where(vector.op("@@")(tsquery), allowed_condition(filters))
        .order_by(score.desc(), Document.path, Chunk.ordinal)
        .limit(limit)
    )
    return [(int(c), int(d), float(s)) for c, d, s in rows]


def fill(url: str, n_chunks: int, pieces: list[str], rng: random.Random) -> None:
    """n_chunks chunks, 10 per document, through COPY (the ORM would take minutes at 100k)."""
    import psycopg
    import sqlalchemy as sa

    plain = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO sources (root, created_at) VALUES ('/bench', now()) RETURNING id")
        source = cur.fetchone()[0]
        n_docs = -(-n_chunks // 10)
        with cur.copy("COPY documents (source_id, uri, path, title, mime, size, mtime, content_sha256, text, version, "
                      "status, metadata, created_at, updated_at) FROM STDIN") as copy:
            for i in range(n_docs):
                copy.write_row((source, f"d{i}.md", f"/bench/d{i:07d}.md", f"Doc {i}", "text/markdown", 1, 0.0,
                                "0" * 64, "", 1, "active", "{}", "2026-11-30", "2026-11-30"))
        cur.execute("SELECT id FROM documents ORDER BY id")
        doc_ids = [r[0] for r in cur.fetchall()]
        with cur.copy("COPY chunks (document_id, ordinal, text, char_start, char_end, token_count) FROM STDIN") as copy:
            for i in range(n_chunks):
                copy.write_row((doc_ids[i // 10], i % 10, pieces[rng.randrange(len(pieces))], 0, 1, 1))
        with cur.copy("COPY document_acl (document_id, group_name) FROM STDIN") as copy:
            for d in doc_ids:
                if rng.random() < 0.30:
                    copy.write_row((d, f"g{rng.randrange(5)}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--limit", type=int, default=50, help="keyword rows per query (hybrid asks for 50 at k=10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()

    import sqlalchemy as sa

    from kb_pipeline.config import Settings
    from kb_pipeline.search.filters import Filters
    from kb_pipeline.search.keyword import keyword_hits, query_terms
    from kb_pipeline.store.db import dispose_engines, session_factory, upgrade

    rng = random.Random(args.seed)
    docs = load_bbc()
    pieces = [" ".join(w[s:s + 150]) for d in docs for w in [d.body.split()] for s in range(0, len(w), 150)]
    queries = [d.headline for d in rng.sample(docs, args.queries)]
    name = f"kb_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        start = time.perf_counter()
        upgrade(url, "0007")
        fill(url, args.chunks, pieces, rng)  # 0003's expression index is maintained as rows go in
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        upgrade(url)  # 0008 on a filled KB
        migrate_s = time.perf_counter() - start
        with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(sa.text("CREATE INDEX ix_chunks_fts ON chunks USING GIN (to_tsvector('english', text))"))
            conn.execute(sa.text("ANALYZE"))
        forms = {"stored": keyword_hits, "parsed": lambda s, q, f, n: parsed_hits(s, query_terms(q), f, n)}
        users = {"anonymous": Filters(), "one group": Filters(groups=("g1",))}
        times = {(u, f): [] for u in users for f in forms}
        differ = 0
        with session_factory(Settings.from_env().with_(database_url=url))() as session:
            for query in queries:
                for user, filters in users.items():
                    got = {}
                    for form, fn in forms.items():
                        t = time.perf_counter()
                        got[form] = fn(session, query, filters, args.limit)
                        times[(user, form)].append(time.perf_counter() - t)
                    differ += [c for c, _, _ in got["stored"]] != [c for c, _, _ in got["parsed"]]
        rows = {}
        for user in users:
            stored, parsed = times[(user, "stored")], times[(user, "parsed")]
            rows[user] = {form: {"p50_ms": 1000 * float(np.percentile(v, 50)), "p95_ms": 1000 * float(np.percentile(v, 95))}
                          for form, v in (("stored", stored), ("parsed", parsed))}
            rows[user]["p50 ratio stored/parsed"] = rows[user]["stored"]["p50_ms"] / rows[user]["parsed"]["p50_ms"]
            rows[user]["p95 ratio stored/parsed"] = rows[user]["stored"]["p95_ms"] / rows[user]["parsed"]["p95_ms"]
        report = {"chunks": args.chunks, "queries": len(queries), "limit": args.limit, "build_s": round(build_s, 1),
                  "migration_0008_s": round(migrate_s, 1),
                  "result lists that differ": differ, "loadavg": [round(x, 2) for x in os.getloadavg()],
                  "rows": rows, "versions": versions(PACKAGES)}
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.chunks:,} chunks, {len(queries)} BBC headlines, limit {args.limit}, built in {build_s:.0f} s, "
          f"migration 0008 {migrate_s:.1f} s; result lists that differ: {differ}; load {report['loadavg']}")
    print(f"{'user':<10} {'stored p50/p95 ms':>18} {'parsed p50/p95 ms':>18} {'p50 ratio':>10} {'p95 ratio':>10}")
    for user, r in rows.items():
        print(f"{user:<10} {r['stored']['p50_ms']:8.1f} /{r['stored']['p95_ms']:7.1f} {r['parsed']['p50_ms']:8.1f} /"
              f"{r['parsed']['p95_ms']:7.1f} {r['p50 ratio stored/parsed']:9.3f}x {r['p95 ratio stored/parsed']:9.3f}x")


if __name__ == "__main__":
    main()
