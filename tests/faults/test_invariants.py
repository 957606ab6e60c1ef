"""The checker itself: each kind of damage a crash could cause is reported (so a green trial means something)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, select, update

from faults import invariants
from kb_pipeline.store.db import dispose_engines, session_factory
from kb_pipeline.store.schema import ChunkEmbedding, Document, IndexBuild


def _damage_missing_vector(s):
    with session_factory(s).begin() as session:
        first = session.scalars(select(ChunkEmbedding.chunk_id).order_by(ChunkEmbedding.chunk_id)).first()
        session.execute(delete(ChunkEmbedding).where(ChunkEmbedding.chunk_id == first))


def _damage_stale_index_vector(s):
    from kb_pipeline.indexing.vector_index import VectorIndex

    with session_factory(s)() as session:
        path = Path(session.scalars(select(IndexBuild.path).where(IndexBuild.status == "ready")).one())
    index, meta = VectorIndex.load(path)
    ids = np.asarray(index.ids())
    index.add(ids[:1], np.random.default_rng(0).normal(size=(1, index.dim)).astype(np.float32))
    checksum = index.save(path, meta)  # a self-consistent file with one wrong vector
    with session_factory(s).begin() as session:
        session.execute(update(IndexBuild).where(IndexBuild.status == "ready").values(checksum=checksum))


def _damage_two_active_adapters(s):
    from kb_pipeline.store.schema import AdapterVersion

    with session_factory(s).begin() as session:
        for _ in range(2):
            session.add(AdapterVersion(
                task="classify", kind="lora", backbone="tiny", backbone_hash="h", adapter_params=1, head_params=1,
                backbone_params=1, path=str(s.adapters_dir / "gone"), size_bytes=1, primary_metric="macro_f1",
                data_hash="d", status="active"))


def _damage_tombstone_keeps_chunks(s):
    with session_factory(s).begin() as session:
        session.execute(update(Document).where(Document.id == select(Document.id).limit(1).scalar_subquery())
                        .values(status="deleted"))


DAMAGE = {
    "active chunks have no vector": _damage_missing_vector,
    "index vectors differ from their stored embedding": _damage_stale_index_vector,
    "2 active classify versions": _damage_two_active_adapters,
    "chunks still belong to deleted documents": _damage_tombstone_keeps_chunks,
}


@pytest.mark.parametrize("expected", sorted(DAMAGE))
def test_the_checker_reports_damage(expected, bench_for, tiny_backbone):
    bench = bench_for("sqlite")
    bench.kb.restore("v2-enriched")
    assert invariants.violations(bench.kb.settings, backbone=tiny_backbone) == []
    DAMAGE[expected](bench.kb.settings)
    dispose_engines()
    problems = invariants.violations(bench.kb.settings, backbone=tiny_backbone)
    assert any(expected in p for p in problems), problems
