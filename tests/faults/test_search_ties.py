"""A KB built incrementally (v1, then v2 of the same folder) must rank like a clean build of v2."""

from __future__ import annotations

import pytest

from faults import invariants


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_keyword_ranking_does_not_depend_on_history(backend, bench_for, tiny_backbone):
    bench = bench_for(backend)
    bench.kb.restore("v2-enriched")
    now = invariants.snapshot(bench.kb.settings, backbone=tiny_backbone)
    assert now["_ranked keyword paths"] == bench.reference["_ranked keyword paths"]
