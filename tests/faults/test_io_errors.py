"""Disk full and I/O errors while the index is saved: the previous index stays live, the error is one
clear line (no traceback), and the next run without the fault repairs everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults import invariants

FAULTS = ["io:enospc-write", "io:eio-fsync", "io:enospc-sidecar"]


def _live(settings):
    from kb_pipeline.store import index_builds
    from kb_pipeline.store.db import dispose_engines, session_factory

    with session_factory(settings)() as session:
        build = index_builds.live_build(session)
        result = (build.id, build.path, build.checksum) if build else None
    dispose_engines()
    return result


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_index_save_keeps_the_previous_index_live(fault, bench_for, tiny_backbone):
    from kb_pipeline.indexing.vector_index import VectorIndex

    bench = bench_for("sqlite")
    kb = bench.kb
    kb.restore("v2-ingested")  # the v1 index is live; enrich must write a new one
    before = _live(kb.settings)
    failed = kb.kill_at(("enrich",), fault)
    assert failed.returncode == 1, f"exit {failed.returncode}: {failed.stderr[-2000:]}"
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    message = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert message and any(w in failed.stderr for w in ("space", "Input/output")), failed.stderr[-2000:]
    assert _live(kb.settings) == before, "the previous index must stay live"
    VectorIndex.load(Path(before[1]))  # and still load
    assert invariants.leftovers(kb.settings)["index_temp_files"] == 0
    kb.run("enrich")
    assert invariants.violations(kb.settings, reference=bench.reference, backbone=tiny_backbone) == []
