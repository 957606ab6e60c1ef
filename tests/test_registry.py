"""Adapter registry: the promotion gate, manual promotion and rollback (SQLite and Postgres)."""

from __future__ import annotations

import pytest

from kb_pipeline.store.db import session_factory
from kb_pipeline.store.schema import AdapterVersion
from kb_pipeline.training import registry


def version(task="classify", macro_f1=0.8, backbone_hash="h1", **kw) -> AdapterVersion:
    return AdapterVersion(
        task=task, kind="lora", backbone="minilm", backbone_hash=backbone_hash, adapter_params=10, head_params=5,
        backbone_params=1000, path="/nowhere", size_bytes=1, primary_metric="macro_f1",
        metrics={"macro_f1": macro_f1}, baseline={"macro_f1": 0.2}, data_hash="d", **kw,
    )


def register(session, v: AdapterVersion) -> AdapterVersion:
    active = registry.active_version(session, v.task, v.backbone_hash)
    decision = registry.gate(v.task, "macro_f1", v.metrics, v.baseline, active.metrics if active else None)
    return registry.register(session, v, decision)


def test_gate_promotes_first_and_equal_or_better_versions():
    assert registry.gate("classify", "macro_f1", {"macro_f1": 0.5}, {"macro_f1": 0.9}, None).promote
    assert registry.gate("classify", "macro_f1", {"macro_f1": 0.7}, {}, {"macro_f1": 0.7}).promote
    worse = registry.gate("classify", "macro_f1", {"macro_f1": 0.6}, {}, {"macro_f1": 0.7})
    assert not worse.promote and "0.6000" in worse.reason and "0.7000" in worse.reason


def test_embed_worse_than_untuned_backbone_is_never_promoted():
    decision = registry.gate("embed", "ndcg@10", {"ndcg@10": 0.40}, {"ndcg@10": 0.45}, None)
    assert not decision.promote and "untuned" in decision.reason


def test_worse_version_stays_candidate_and_active_is_kept(settings):
    with session_factory(settings).begin() as s:
        first = register(s, version(macro_f1=0.8))
        worse = register(s, version(macro_f1=0.7))
        assert (first.status, worse.status) == ("active", "candidate")
        assert "below the active version" in worse.reason
        better = register(s, version(macro_f1=0.85))
        assert better.status == "active"
        s.refresh(first)
        assert first.status == "retired"
        assert registry.active_version(s, "classify", "h1").id == better.id


def test_one_active_version_per_task_and_backbone(settings):
    with session_factory(settings).begin() as s:
        a = register(s, version(backbone_hash="h1"))
        b = register(s, version(backbone_hash="h2", macro_f1=0.1))
        c = register(s, version(task="embed"))
        assert {v.id for v in (a, b, c)} == {v.id for v in registry.list_versions(s) if v.status == "active"}


def test_manual_promote_and_rollback(settings):
    with session_factory(settings).begin() as s:
        v1 = register(s, version(macro_f1=0.8))
        v2 = register(s, version(macro_f1=0.6))  # candidate: worse
        registry.promote(s, v2.id)
        s.refresh(v1)
        assert v2.status == "active" and v1.status == "retired" and "by hand" in v2.reason
        back = registry.rollback(s, "classify")
        s.refresh(v2)
        assert back.id == v1.id and back.status == "active" and v2.status == "retired"


def test_rollback_without_history_and_unknown_versions_are_refused(settings):
    with session_factory(settings).begin() as s:
        with pytest.raises(registry.RegistryError, match="no active"):
            registry.rollback(s, "summarise")
        register(s, version())
        with pytest.raises(registry.RegistryError, match="nothing to roll back"):
            registry.rollback(s, "classify")
        with pytest.raises(registry.RegistryError, match="no adapter version 999"):
            registry.promote(s, 999)
        with pytest.raises(registry.RegistryError, match="unknown task"):
            registry.rollback(s, "translate")
