"""The shared trunk: caching the frozen lower layers changes no output and skips their work."""

from __future__ import annotations

import pytest
import torch

from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
from tiny_models import batch, single_threaded, tiny_backbone

TEXTS = ["the leave policy", "deploy the service and roll back a failed release today", "x"]


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("kind", ["lora", "bottleneck"])
def test_cached_trunk_gives_the_same_outputs_and_gradients(family, kind):
    backbone = tiny_backbone(family)
    adapters = AdapterSet(backbone)
    adapters.add("task", AdapterConfig(kind=kind, layers=2), seed=1)
    with torch.no_grad():  # make the adapter do something
        for p in adapters.parameters("task"):
            p.add_(torch.randn_like(p) * 0.1)
    adapters.activate("task")
    b = batch(backbone, TEXTS)
    real = b["attention_mask"].bool()
    assert adapters.trunk_split() == backbone.num_layers - 2

    full = adapters.hidden_states(b["input_ids"], b["attention_mask"], output_all=True)[-1]  # no cache
    first = adapters.hidden_states(b["input_ids"], b["attention_mask"])  # fills the cache
    again = adapters.hidden_states(b["input_ids"], b["attention_mask"])  # served from it
    assert torch.allclose(first[real], full[real], atol=1e-6)
    assert torch.equal(first, again)
    assert adapters.trunk.misses == 3 and adapters.trunk.hits == 3

    again.pow(2).sum().backward()
    grads = [p.grad for p in adapters.parameters("task")]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in backbone.model.parameters() if not p.requires_grad)
    adapters.close()


def test_lower_layers_do_not_run_on_a_cache_hit():
    backbone = tiny_backbone("bert")
    adapters = AdapterSet(backbone)
    adapters.add("task", AdapterConfig(kind="lora", layers=1))
    adapters.activate("task")
    calls = []
    bottom = backbone.transformer_layers()[0]
    inner = next(bottom.children())  # runs only when the layer really computes
    handle = inner.register_forward_pre_hook(lambda *_: calls.append(1))
    b = batch(backbone, TEXTS)
    with torch.no_grad():
        adapters.hidden_states(b["input_ids"], b["attention_mask"])
        ran_on_miss = len(calls)
        adapters.hidden_states(b["input_ids"], b["attention_mask"])
    handle.remove()
    assert ran_on_miss == 1 and len(calls) == 1
    assert bottom.forward.__func__ is type(bottom).forward  # the class's forward is back after replay
    adapters.close()


def test_all_layer_adapters_and_the_plain_backbone_bypass_the_cache():
    backbone = tiny_backbone("bert")
    adapters = AdapterSet(backbone)
    adapters.add("task", AdapterConfig(kind="lora", layers=None))
    for task in ("task", None):
        adapters.activate(task)
        assert adapters.trunk_split() == 0
    adapters.close()
