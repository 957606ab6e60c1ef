"""The query-encoder fast path: onnxruntime vectors match torch's, the cache is reused, torch is the fallback."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
from kb_pipeline.search import query_encoder as qe
from kb_pipeline.tasks.embed import embed_texts
from tiny_models import single_threaded, tiny_bert_backbone

pytest.importorskip("onnxruntime")

QUERIES = [
    "reset password",
    "the nightly backup failed because the storage volume was full",
    "travel expenses approval",
    "Search the knowledge base for policies, how-to guides and meeting notes about payroll and badges",
]


@pytest.fixture(scope="module")
def adapters():
    """A tiny BERT with a LoRA embed adapter, a bottleneck 'other' adapter, both with random (non-identity) weights."""
    with single_threaded():
        backbone = tiny_bert_backbone(seed=3)
        adapters = AdapterSet(backbone)
        adapters.add("embed", AdapterConfig(kind="lora", rank=4, layers=2, dropout=0.0))
        adapters.add("other", AdapterConfig(kind="bottleneck", bottleneck_size=8, layers=2, dropout=0.0))
        adapters.add("both", AdapterConfig(kind="lora", rank=4, dropout=0.0, target_modules=("query", "key", "value")))
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for task in adapters.tasks():
                for param in adapters.parameters(task):
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        yield adapters
        adapters.close()


def torch_embed(adapters, task):
    return lambda texts: embed_texts(adapters, texts, task, max_length=64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("task", ["embed", "other", "both", None])
def test_onnx_vectors_match_torch_per_query(adapters, tmp_path, task):
    with single_threaded():
        encoder = qe.QueryEncoder(adapters, task, tmp_path, torch_embed(adapters, task), max_length=64, background=False)
        assert encoder.fast, encoder.status
        expected = torch_embed(adapters, task)(QUERIES)
        one_by_one = np.vstack([encoder.embed([q]) for q in QUERIES])
        batched = encoder.embed(QUERIES)  # padded batch: the mask must still apply
    assert one_by_one.shape == expected.shape and one_by_one.dtype == np.float32
    assert cosines(one_by_one, expected).min() >= 0.999
    assert cosines(batched, expected).min() >= 0.999
    if task is not None:  # the adapter really changes the vectors, so matching them means it was applied
        plain = torch_embed(adapters, None)(QUERIES)
        assert cosines(plain, expected).min() < 0.99


def test_merging_leaves_the_shared_backbone_alone(adapters):
    with single_threaded():
        before = {t: torch_embed(adapters, t)(QUERIES) for t in ("embed", "other", None)}
        active = adapters.active
        qe.merged_encoder(adapters, "embed")
        qe.merged_encoder(adapters, "other")
        after = {t: torch_embed(adapters, t)(QUERIES) for t in ("embed", "other", None)}
    assert adapters.active == active
    for task in before:
        np.testing.assert_array_equal(before[task], after[task])


def test_exported_file_is_reused_and_keyed_by_adapter_weights(adapters, tmp_path, monkeypatch):
    with single_threaded():
        first = qe.QueryEncoder(adapters, "embed", tmp_path, torch_embed(adapters, "embed"), max_length=64,
                                background=False)
        assert first.fast
        monkeypatch.setattr(qe, "export_onnx", lambda *a, **k: pytest.fail("the cached file should be reused"))
        again = qe.QueryEncoder(adapters, "embed", tmp_path, torch_embed(adapters, "embed"), max_length=64)
        assert again.wait(10) and again.fast and again.path == first.path
        np.testing.assert_allclose(again.embed(QUERIES), first.embed(QUERIES), atol=1e-6)
        assert qe.cache_key(adapters, "other", False) != qe.cache_key(adapters, "embed", False)
        state = adapters.state_dict("embed")
        changed = {k: v + 0.01 for k, v in state.items()}
        adapters.load("embed", adapters.config("embed"), changed)
        try:
            assert qe.cache_key(adapters, "embed", False) != first.path.stem  # a retrained adapter gets a new file
        finally:
            adapters.load("embed", adapters.config("embed"), state)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temp files left


def test_a_one_shot_process_uses_an_exported_file_but_never_exports(adapters, tmp_path, monkeypatch):
    """`kb search` (build=False) must not start an export it would not live to finish; `kb enrich` exports."""
    with single_threaded():
        monkeypatch.setattr(qe, "export_onnx", lambda *a, **k: pytest.fail("a one-shot process must not export"))
        cold = qe.QueryEncoder(adapters, "embed", tmp_path, torch_embed(adapters, "embed"), max_length=64, build=False)
        assert not cold.fast and "kb enrich" in cold.status and list(tmp_path.iterdir()) == []
        np.testing.assert_allclose(cold.embed(QUERIES), torch_embed(adapters, "embed")(QUERIES), atol=1e-6)
        monkeypatch.undo()
        qe.QueryEncoder(adapters, "embed", tmp_path, torch_embed(adapters, "embed"), max_length=64, background=False)
        warm = qe.QueryEncoder(adapters, "embed", tmp_path, torch_embed(adapters, "embed"), max_length=64, build=False)
        assert warm.fast


def test_without_onnxruntime_queries_use_torch(adapters, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    calls = []
    fallback = torch_embed(adapters, "embed")
    encoder = qe.QueryEncoder(adapters, "embed", tmp_path, lambda t: calls.append(t) or fallback(t), max_length=64)
    assert encoder.wait(1) and not encoder.fast and "onnxruntime is not installed" in encoder.status
    with single_threaded():
        out = encoder.embed(QUERIES[:2])
    assert calls == [QUERIES[:2]]
    np.testing.assert_array_equal(out, fallback(QUERIES[:2]))
    assert not list(tmp_path.iterdir())


def test_failed_export_falls_back_to_torch(adapters, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with single_threaded():
        encoder = qe.QueryEncoder(adapters, "embed", tmp_path, torch_embed(adapters, "embed"), max_length=64)
        assert encoder.wait(30) and not encoder.fast
        assert "exporter exploded" in encoder.status
        np.testing.assert_array_equal(encoder.embed(QUERIES[:1]), torch_embed(adapters, "embed")(QUERIES[:1]))
    assert not list(tmp_path.iterdir())  # no half-written file left to be loaded later
