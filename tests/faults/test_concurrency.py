"""Two `kb enrich` or two `kb train` at once on one KB: both succeed, nothing is duplicated or lost,
one index, at most one active adapter per task (SQLite and Postgres)."""

from __future__ import annotations

import os
import shutil

import pytest
from sqlalchemy import func, select

from faults import harness, invariants
from kb_pipeline.store.db import dispose_engines, session_factory
from kb_pipeline.store.schema import AdapterVersion, IndexBuild

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def run_together(kb: harness.FaultKB, *commands: tuple, point: str = "") -> list:
    shutil.rmtree(kb.root / "barrier", ignore_errors=True)
    procs = [kb.start(*command, point=point) for command in commands]
    results = []
    for proc in procs:
        code = proc.wait(300)
        if code is None:  # hung: do not leave it running
            proc.kill()
        results.append((code, proc.stdout(), proc.stderr()))
    for code, _, err in results:
        assert code == 0 and "Traceback" not in err, err[-3000:]
    return results


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_enrich_runs_at_once(backend, bench_for, tiny_backbone):
    bench = bench_for(backend)
    bench.kb.restore("v2-ingested")
    # both compute the same stale chunks' vectors, then both save them: the race, every time
    run_together(bench.kb, ("enrich",), ("enrich",), point="meet:save-embeddings")
    assert invariants.violations(bench.kb.settings, reference=bench.reference, backbone=tiny_backbone) == []
    with session_factory(bench.kb.settings)() as session:
        ready = session.scalar(select(func.count()).where(IndexBuild.status == "ready"))
    dispose_engines()
    assert ready == 1, "one live index"


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_training_runs_at_once(backend, bench_for, tiny_backbone):
    bench = bench_for(backend)
    bench.kb.restore("v2-enriched")
    run_together(bench.kb, harness.TRAIN_COMMAND, harness.TRAIN_COMMAND)
    with session_factory(bench.kb.settings)() as session:
        statuses = sorted(session.scalars(select(AdapterVersion.status).where(AdapterVersion.task == "classify")))
    dispose_engines()
    assert len(statuses) == 2, "each run registers its version: no lost outputs"
    assert statuses.count("active") == 1, statuses
    assert invariants.violations(bench.kb.settings, reference=bench.reference, backbone=tiny_backbone) == []
    assert invariants.leftovers(bench.kb.settings)["unreferenced_adapter_folders"] == 0


@pytest.mark.skipif(os.environ.get("KB_FAULT_PIPELINE") != "1", reason=(
    "opt-in (KB_FAULT_PIPELINE=1, ~40 s): two first `kb run` at once used to race in Prefect's own database "
    "migrations under the shared $KB_HOME/prefect (flows.runtime.start_local_api now serialises the start-up); "
    "the race needs a loaded machine to show, so it is too slow and too timing-dependent for every CI run"))
def test_two_pipeline_runs_at_once(bench_for, tiny_backbone):
    """Two `kb run` (ingest, train, enrich, index in Prefect flows) on one SQLite KB and one Prefect home."""
    bench = bench_for("sqlite")
    bench.kb.restore("v1")  # corpus v2 on disk: both runs find changes, train the adapters, re-enrich
    # both start their flow (and Prefect's local server on the shared Prefect home) at the same moment
    run_together(bench.kb, ("run", str(bench.corpus)), ("run", str(bench.corpus)), point="meet:run-pipeline")
    same_files = {k: bench.reference[k] for k in ("documents", "chunks", "keyword search")}
    assert invariants.violations(bench.kb.settings, reference=same_files, backbone=tiny_backbone) == []
    with session_factory(bench.kb.settings)() as session:
        ready = session.scalar(select(func.count()).where(IndexBuild.status == "ready"))
    dispose_engines()
    assert ready == 1, "one live index"
