"""HTTP cost of `kb web`: /api/search over loopback beside the same queries through the library in-process.

    KB_HOME=/tmp/webkb kb run sample_corpus            # once (~5 min): a KB with adapters and an index
    KB_HOME=/tmp/webkb python benchmarks/web.py         # 1, 4, 16 concurrent clients
    KB_HOME=/tmp/webkb python benchmarks/web.py --clients 1 4 --requests 200 --seconds 20 --json

    python benchmarks/web.py --make-corpus /tmp/bbc4000 --documents 4000   # a 4,000-document KB from BBC News:
    KB_HOME=/tmp/webkb4k kb ingest /tmp/bbc4000 && KB_HOME=/tmp/webkb4k kb enrich   # (no adapters: untuned vectors)
    KB_HOME=/tmp/webkb4k python benchmarks/web.py

The server is a real `kb web` process on a free loopback port; clients are threads with one keep-alive
httpx connection each, every one sending the KB's document titles as queries (k=10, hybrid, anonymous) until
--requests in total or --seconds have passed. The in-process side runs the same queries with the same number
of threads through what `kb search` calls (`Searcher.search`, one session per query) and through the web's
own view (`search_view`: search + labels + facet counts), on the same searcher `kb web` loads. Target: at 4
clients the HTTP p95 is at most 2x the in-process library p95 at 4 threads, with 0 errors. The machine's load
is printed: a busy CPU shows directly in the tail latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/web.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_level(call, queries: list[str], clients: int, max_requests: int, max_seconds: float) -> dict:
    """`clients` threads call `call(query)` until max_requests in total or max_seconds; latencies in ms."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.monotonic() + max_seconds

    def worker(worker_id: int) -> None:
        state = {}
        while time.monotonic() < deadline:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            q = queries[(n * 7 + worker_id) % len(queries)]
            start = time.perf_counter()
            try:
                call(q, state)
                ms = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(ms)
            except Exception as exc:  # noqa: BLE001  (counted and reported, the run goes on)
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "seconds": round(wall, 2), "rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1)}


def make_corpus(folder: Path, documents: int) -> None:
    """BBC News articles as Markdown with their topic as the category (a fifth of them in an hr-only ACL); past the
    ~2,100 articles, the second half of each article again as a document of its own."""
    import yaml

    from benchmarks.bbc_data import load_bbc

    articles = load_bbc()
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(documents):
        doc = articles[n % len(articles)]
        body = doc.body if n < len(articles) else doc.body[len(doc.body) // 2:]
        front = {"title": doc.headline if n < len(articles) else f"{doc.headline} (continued)", "category": doc.label}
        if n % 5 == 4:
            front["acl"] = ["hr"]
        header = yaml.safe_dump(front, allow_unicode=True, sort_keys=False, width=10_000)
        (folder / f"article-{n:05d}.md").write_text(f"---\n{header}---\n{body}\n", encoding="utf-8")
    print(f"wrote {documents} documents to {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make-corpus", type=Path, help="write a BBC News corpus of --documents files here and stop")
    parser.add_argument("--documents", type=int, default=4000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=200, help="requests per level, at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per level, at most")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--mode", default="hybrid", choices=["hybrid", "dense", "keyword"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.make_corpus:
        make_corpus(args.make_corpus, args.documents)
        return

    import httpx
    from sqlalchemy import select

    from kb_pipeline.config import Settings
    from kb_pipeline.search.hybrid import Filters
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.schema import Document
    from kb_pipeline.web.engine import SearchEngine
    from kb_pipeline.web.views import FacetCache, search_view

    settings = Settings.from_env()
    Session = session_factory(settings)
    with Session() as s:
        queries = list(s.scalars(select(Document.title).where(Document.status == "active").order_by(Document.id)))
        documents = len(queries)
    if not queries:
        sys.exit(f"no documents in the KB at {settings.home}: run `kb run sample_corpus` with this KB_HOME first")

    engine = SearchEngine(settings).start(watch=False)
    gen = engine.current
    facets = FacetCache()
    filters = Filters(groups=None)

    def library(q, _state):
        with Session() as s:
            gen.searcher.search(s, q, k=args.k, mode=args.mode, filters=filters)

    def view(q, _state):
        with Session() as s:
            search_view(s, gen, facets, q=q, k=args.k, mode=args.mode, filters=filters)

    port = _free_port()
    kb = Path(sys.executable).with_name("kb")
    env = dict(os.environ, KB_WEB_REQUIRE_LOGIN="0")
    server = subprocess.Popen([str(kb), "web", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/api/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"kb web did not come up: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)

        def http(q, state):
            client = state.setdefault("client", httpx.Client(base_url=base, timeout=60))
            r = client.get("/api/search", params={"q": q, "k": args.k, "mode": args.mode})
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:120]}")

        for warm in queries[:5]:  # first-call allocations on both sides
            library(warm, {}), view(warm, {}), http(warm, {})
        rows = []
        for clients in args.clients:
            lib = run_level(library, queries, clients, args.requests, args.seconds)
            web_view = run_level(view, queries, clients, args.requests, args.seconds)
            over_http = run_level(http, queries, clients, args.requests, args.seconds)
            rows.append({"clients": clients, "library": lib, "view": web_view, "http": over_http,
                         "p95_ratio": round(over_http["p95_ms"] / lib["p95_ms"], 2)})
    finally:
        server.terminate()
        server.wait(30)
    report = {"kb_home": str(settings.home), "documents": documents, "database": settings.database_url.split(":")[0],
              "backbone": settings.backbone, "versions": gen.versions(), "k": args.k, "mode": args.mode,
              "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(), "levels": rows}
    if args.json:
        print(json.dumps(report))
        return
    print(f"/api/search vs in-process on {documents} documents ({report['database']}, backbone {settings.backbone}, "
          f"k={args.k}, {args.mode}); load average {report['load_average']} on {report['cpus']} CPUs")
    print(f"{'clients':>7} | {'library rps':>11} {'p50':>7} {'p95':>7} | {'view rps':>8} {'p50':>7} {'p95':>7} | "
          f"{'HTTP rps':>8} {'p50':>7} {'p95':>7} {'errors':>6} | {'HTTP p95 / library p95':>22}")
    for row in rows:
        lib, v, h = row["library"], row["view"], row["http"]
        print(f"{row['clients']:>7} | {lib['rps']:>11} {lib['p50_ms']:>7} {lib['p95_ms']:>7} | {v['rps']:>8} {v['p50_ms']:>7} "
              f"{v['p95_ms']:>7} | {h['rps']:>8} {h['p50_ms']:>7} {h['p95_ms']:>7} {h['errors']:>6} | {row['p95_ratio']:>22}")
    at4 = next((r for r in rows if r["clients"] == 4), None)
    if at4:
        met = at4["p95_ratio"] <= 2 and at4["http"]["errors"] == 0
        print(f"target (4 clients: HTTP p95 <= 2x library p95, 0 errors): {'met' if met else 'NOT met'} "
              f"({at4['p95_ratio']}x, {at4['http']['errors']} errors)")


if __name__ == "__main__":
    main()
