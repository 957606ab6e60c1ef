"""What migration 0007's search-generation triggers cost a write: bulk chunk inserts with and without them.

    python benchmarks/generation_triggers.py              # 20,000 chunks, SQLite, three rounds
    python benchmarks/generation_triggers.py --chunks 5000 --rounds 2

Two KBs migrated to head (real schema: FTS5 triggers included); in one, the chunks table's generation triggers
are dropped. The same rows are inserted into each in one transaction, alternating which goes first, and the
ratio of the times is printed (what ingest pays per chunk row, before parsing and tokenising, which dominate).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def kb(folder: Path, triggers: bool):
    from sqlalchemy import insert, text

    from kb_pipeline.config import Settings
    from kb_pipeline.store.db import session_factory, upgrade
    from kb_pipeline.store.schema import Document, Source

    folder.mkdir(parents=True)
    settings = Settings.from_env().with_(home=folder, database_url=f"sqlite:///{folder / 'kb.sqlite3'}")
    upgrade(settings.database_url)
    with session_factory(settings).begin() as s:
        if not triggers:
            for event in ("insert", "update", "delete"):
                s.execute(text(f"DROP TRIGGER kb_search_generation_chunks_{event}"))
        s.add(Source(id=1, root=str(folder)))
        s.flush()
        s.execute(insert(Document), [{"source_id": 1, "uri": f"d{i}", "path": f"/d{i}", "title": "t", "mime": "m", "size": 1,
                                      "mtime": 0.0, "content_sha256": "0" * 64, "text": ""} for i in range(1, 2001)])
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from sqlalchemy import insert

    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.schema import Chunk

    words = "the bank raised rates growth slowed in the third quarter while the club won the cup final".split()
    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="kb-trig-bench-"))
    try:
        ratios = []
        for r in range(args.rounds):
            times = {}
            order = [True, False] if r % 2 == 0 else [False, True]
            for triggers in order:
                settings = kb(work / f"{r}-{triggers}", triggers)
                rows = [{"document_id": 1 + i // 10, "ordinal": i % 10, "text": " ".join(rng.choices(words, k=150)),
                         "char_start": 0, "char_end": 1, "token_count": 150} for i in range(args.chunks)]
                start = time.perf_counter()
                with session_factory(settings).begin() as s:
                    s.execute(insert(Chunk), rows)
                times[triggers] = time.perf_counter() - start
            ratios.append(times[True] / times[False])
            print(f"round {r}: {args.chunks} chunk rows: without generation triggers {times[False]:.2f}s, "
                  f"with {times[True]:.2f}s, ratio {ratios[-1]:.3f}")
        print(f"median ratio (with / without): {sorted(ratios)[len(ratios) // 2]:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
