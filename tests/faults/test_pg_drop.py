"""Postgres drops the connection mid-run (pg_terminate_backend): the run retries or fails with one
clear line, never half-writes, and a re-run completes (ingest and enrich)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from faults import harness, invariants
from kb_pipeline.store.db import dispose_engines

pytestmark = pytest.mark.postgres
FILES = 1500  # enough batches that the run is still writing when the first rows are visible
STARTED = {"ingest": "SELECT count(*) FROM documents", "enrich": "SELECT count(*) FROM chunk_embeddings"}


def write_many(root, n: int):
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"note-{i:04d}.md").write_text(f"# Note {i}\n\nShort note number {i} about the {harness.WORDS[i % 10]} rota.\n")
    return root


@pytest.mark.parametrize("command", ["ingest", "enrich"])
def test_terminated_backends_mid_run(command, tmp_path, backbone_dir, tiny_backbone):
    from faults.conftest import postgres_or_skip

    postgres_or_skip()
    corpus = write_many(tmp_path / "corpus", FILES)
    args = ("ingest", str(corpus)) if command == "ingest" else ("enrich",)
    kb = harness.FaultKB(tmp_path / "kb", backbone_dir, "postgres").create()
    if command == "enrich":
        kb.run("ingest", str(corpus))
    admin = sa.create_engine(harness.POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    probe = sa.create_engine(kb.database_url, connect_args={"application_name": "kb-fault-probe"}, pool_pre_ping=True)
    try:
        proc = kb.start(*args)
        terminated, deadline = 0, time.monotonic() + 120
        while proc.wait(0) is None and time.monotonic() < deadline:
            with probe.connect() as conn:
                started = conn.execute(sa.text(STARTED[command])).scalar()
            if started and terminated < 5:  # kill its connections again and again while it writes
                with admin.connect() as conn:
                    terminated += conn.execute(sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid() AND application_name <> 'kb-fault-probe' "
                        "AND state IN ('active', 'idle in transaction', 'idle')"),  # idle ones too: the pool must notice
                        {"db": kb.db_name}).scalar()
            time.sleep(0.05)
        code, err = proc.wait(120), proc.stderr()
        print(f"{command}: terminated {terminated} backends; exited {code}; stderr tail: {err.strip()[-300:]!r}")
        assert terminated, f"kb {command} finished before a backend could be terminated: use more files"
        probe.dispose()
        kb.run(*args)  # nothing half-written: the re-run completes and the KB is consistent
        if command == "ingest":
            kb.run("enrich")
        problems = invariants.violations(kb.settings, backbone=tiny_backbone)
        with probe.connect() as conn:
            active = conn.execute(sa.text("SELECT count(*) FROM documents WHERE status = 'active'")).scalar()
        assert problems == [] and active == FILES, problems
        # and the interrupted run either retried to success or failed with one clear line
        assert "Traceback" not in err, err[-3000:]
        if code != 0:
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert code == 1 and len(errors) == 1, err[-3000:]
    finally:
        probe.dispose()
        admin.dispose()
        dispose_engines()
        kb.drop()
