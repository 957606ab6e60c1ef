"""Enrichment throughput on Dask: 1 worker against 2 workers (and the default in-process runner).

    python benchmarks/scaleout.py                      # sample_corpus x2 on a temporary Postgres database
    python benchmarks/scaleout.py --copies 4 --json
    python benchmarks/scaleout.py --sqlite             # SQLite file shared by the local workers instead

A temporary KB (the database on the Postgres server at KB_TEST_POSTGRES_URL, dropped afterwards) gets
`--copies` copies of sample_corpus, ingested once. No adapters are trained, so enrichment is what a fresh
KB runs: every chunk embedded by the untuned MiniLM, then the index. For each configuration the stored
embeddings and index builds are deleted first, so every run does the same work. Each Dask worker
loads the model once before the clock starts (timed separately as `warm-up`): the workers are
long-lived, so the steady state is what a served pipeline sees. `enrich_flow` then runs with its
batches (64 documents) spread over the workers; the time covers planning, the batches with their
database writes, and the index sync.

Each worker is one process with one thread (torch inside it uses 1 intra-op thread per worker, so two
workers use the machine's 2 cores by process rather than by thread). On a 2-core machine the expected
ceiling for 2 workers is well under 2x: the in-process run already uses both cores for torch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402,F401  (offline: sets HF_HUB_OFFLINE and friends before HF imports)
from benchmarks.report import versions  # noqa: E402

PACKAGES = ("kb-pipeline", "torch", "prefect", "prefect-dask", "distributed", "sqlalchemy", "psycopg")
ADMIN_URL = os.environ.get("KB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _create_database() -> str:
    import sqlalchemy as sa

    name = f"kb_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_database(url: str) -> None:
    import sqlalchemy as sa

    from kb_pipeline.store.db import dispose_engines

    dispose_engines()
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.engine.make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def _reset(settings) -> None:
    """Forget every embedding and index build, so the next enrich does the whole job again."""
    from sqlalchemy import delete

    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.schema import ChunkEmbedding, IndexBuild

    with session_factory(settings).begin() as session:
        session.execute(delete(ChunkEmbedding))
        session.execute(delete(IndexBuild))
    shutil.rmtree(settings.index_dir, ignore_errors=True)


def _warm(settings) -> float:
    """Load the backbone and adapters in this worker's process (what the first batch would do)."""
    import torch

    from flows.tasks import task_models

    torch.set_num_threads(1)
    started = time.perf_counter()
    task_models(settings)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="copies of sample_corpus to ingest")
    parser.add_argument("--sqlite", action="store_true", help="use a SQLite file instead of Postgres")
    parser.add_argument("--workers", default="1,2", help="Dask worker counts to measure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="kb-scaleout-"))
    url = None if args.sqlite else _create_database()
    os.environ["KB_HOME"] = str(home / "kb")
    if url:
        os.environ["KB_DATABASE_URL"] = url
    from kb_pipeline.config import Settings

    settings = Settings.from_env()
    from flows.runtime import local_dask_cluster, prefect_environment

    prefect_environment(settings)
    try:
        from flows.pipeline import _on, enrich_flow, ingest_flow
        from kb_pipeline.store import repo
        from kb_pipeline.store.db import session_factory

        corpus = home / "corpus"
        for i in range(args.copies):
            shutil.copytree(ROOT / "sample_corpus", corpus / f"copy-{i}")
        ingest_flow([str(corpus)])
        with session_factory(settings)() as session:
            stats = repo.stats(session)
        rows = []

        _reset(settings)
        started = time.perf_counter()
        result = enrich_flow()
        seconds = time.perf_counter() - started
        rows.append({"runner": "in-process (threads, 1 task at a time)", "workers": 1, "warm_up_s": None,
                     "seconds": seconds, "chunks": result["enrichment"]["embedded"]})

        for workers in [int(w) for w in args.workers.split(",")]:
            _reset(settings)
            with local_dask_cluster(workers) as cluster, cluster.get_client() as client:
                warm = max(client.run(_warm, settings).values())
                started = time.perf_counter()
                result = _on(enrich_flow, cluster.scheduler_address)(cluster.scheduler_address)
                seconds = time.perf_counter() - started
            rows.append({"runner": f"Dask LocalCluster, {workers} worker(s) x 1 thread", "workers": workers,
                         "warm_up_s": warm, "seconds": seconds, "chunks": result["enrichment"]["embedded"]})
        for row in rows:
            row["chunks_per_s"] = row["chunks"] / row["seconds"]
        dask_rows = {r["workers"]: r for r in rows[1:]}
        ratio = dask_rows[2]["chunks_per_s"] / dask_rows[1]["chunks_per_s"] if {1, 2} <= set(dask_rows) else None
        report = {"documents": stats["documents"], "chunks": stats["chunks"], "database": "sqlite" if args.sqlite else "postgres",
                  "cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows,
                  "two_vs_one_worker": ratio, "versions": versions(PACKAGES)}
        if args.json:
            print(json.dumps(report, indent=2))
            return
        print(f"enrich of {stats['documents']} documents / {stats['chunks']} chunks on {report['database']}, "
              f"{report['cpus']} CPUs, load average {', '.join(f'{x:.2f}' for x in report['load_average'])}")
        print(f"{'runner':48} {'warm-up s':>10} {'seconds':>8} {'chunks/s':>9}")
        for row in rows:
            warm = f"{row['warm_up_s']:.1f}" if row["warm_up_s"] is not None else "-"
            print(f"{row['runner']:48} {warm:>10} {row['seconds']:8.1f} {row['chunks_per_s']:9.1f}")
        if ratio is not None:
            print(f"2 workers / 1 worker throughput: {ratio:.2f}x")
        print("versions:", json.dumps(report["versions"]))
    finally:
        if url:
            _drop_database(url)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
