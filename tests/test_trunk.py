"""The shared trunk: caching the frozen lower layers changes no output and skips their work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
from kb_pipeline.backbone.forward import TrunkCache
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
    assert first.dtype == again.dtype == torch.float32  # stored in bfloat16, read back as float32
    assert torch.allclose(first[real], full[real], atol=2e-2)  # bf16 keeps ~3 digits of the trunk
    assert F.cosine_similarity(first[real], full[real]).min() > 0.9999
    assert torch.equal(first, again)  # the pass that fills the cache already sees the rounded trunk
    assert adapters.trunk.misses == 3 and adapters.trunk.hits == 3

    again.pow(2).sum().backward()
    grads = [p.grad for p in adapters.parameters("task")]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in backbone.model.parameters() if not p.requires_grad)
    adapters.close()


def test_a_float32_cache_reproduces_the_uncached_forward():
    backbone = tiny_backbone("bert")
    adapters = AdapterSet(backbone)
    adapters.add("task", AdapterConfig(kind="lora", layers=2), seed=1)
    adapters.activate("task")
    adapters.trunk = TrunkCache(dtype=None)  # rows kept as they come
    b = batch(backbone, TEXTS)
    real = b["attention_mask"].bool()
    with torch.no_grad():
        full = adapters.hidden_states(b["input_ids"], b["attention_mask"], output_all=True)[-1]
        first = adapters.hidden_states(b["input_ids"], b["attention_mask"])
        again = adapters.hidden_states(b["input_ids"], b["attention_mask"])
    assert torch.allclose(first[real], full[real], atol=1e-6) and torch.equal(first, again)
    assert adapters.trunk.used == 4 * backbone.hidden_size * int(b["attention_mask"].sum())
    adapters.close()


def test_the_cache_budget_counts_bytes_as_stored_and_evicts_the_oldest_rows():
    hidden, tokens = 8, 5
    row_bytes = 2 * tokens * hidden  # bfloat16
    cache = TrunkCache(budget_bytes=3 * row_bytes)
    rows = [torch.randn(tokens, hidden) for _ in range(5)]
    for i, row in enumerate(rows[:3]):
        back = cache.put((1, bytes([i])), row)
        assert back.dtype == torch.float32 and torch.equal(back, cache.get((1, bytes([i]))))
        assert torch.allclose(back, row, rtol=1e-2, atol=1e-2) and not torch.equal(back, row)  # rounded
    assert cache.used == 3 * row_bytes and len(cache) == 3  # three float32 rows would need twice the budget
    cache.put((1, bytes([3])), rows[3])
    assert cache.get((1, bytes([0]))) is None  # the oldest made room
    assert all(cache.get((1, bytes([i]))) is not None for i in (1, 2, 3))
    assert cache.used == 3 * row_bytes <= cache.budget
    cache.put((1, bytes([4])), torch.randn(4 * tokens, hidden))  # larger than the whole budget: not kept
    assert len(cache) == 3 and cache.used == 3 * row_bytes
    assert torch.allclose(cache.get((1, bytes([3]))), rows[3], rtol=1e-2, atol=1e-2)  # survivors intact
    cache.clear()
    assert cache.used == 0 and len(cache) == 0 and cache.get((1, bytes([1]))) is None


def test_cached_rows_are_copies_that_callers_cannot_corrupt():
    cache = TrunkCache(budget_bytes=1 << 20)
    row = torch.randn(4, 8)
    cache.put((1, b"k"), row).zero_()
    cache.get((1, b"k")).zero_()
    assert torch.allclose(cache.get((1, b"k")), row, rtol=1e-2, atol=1e-2)


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


def _noisy_tasks(adapters, kind, tasks=("embed", "classify", "summarise"), layers=2):
    for seed, task in enumerate(tasks, start=1):
        adapters.add(task, AdapterConfig(kind=kind, layers=layers), seed=seed)
        with torch.no_grad():  # a fresh adapter is the identity: make each task compute something different
            for p in adapters.parameters(task):
                p.add_(torch.randn_like(p) * 0.1)


class _Counter:
    """Counts real forwards of a transformer layer (a replayed layer never calls its children)."""

    def __init__(self, layer):
        self.calls = 0
        self.handle = next(layer.children()).register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1

    def remove(self):
        self.handle.remove()


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("kind", ["lora", "bottleneck"])
def test_branched_states_equal_each_tasks_own_forward(family, kind):
    backbone = tiny_backbone(family)
    adapters = AdapterSet(backbone)
    _noisy_tasks(adapters, kind)
    b = batch(backbone, TEXTS)
    rows = {"embed": [0, 1, 2], "classify": [1], "summarise": [2, 0], None: [1, 2]}
    with torch.no_grad():
        branched = adapters.branched_states(b["input_ids"], b["attention_mask"], rows)
        for task, task_rows in rows.items():
            ids, mask = b["input_ids"][task_rows], b["attention_mask"][task_rows]
            with adapters.using(task):
                own = adapters.hidden_states(ids, mask, output_all=True)[-1]  # no trunk, no cache
            width = branched[task].shape[1]
            real = b["attention_mask"][task_rows, :width].bool()
            assert width == int(b["attention_mask"][task_rows].sum(1).max())  # trimmed to the task's longest row
            assert torch.allclose(branched[task][real], own[:, :width][real], atol=1e-5), task
    assert adapters.active is None  # whatever was active before is active again
    adapters.close()


def test_branched_states_run_the_lower_layers_once_for_every_task():
    backbone = tiny_backbone("bert")
    adapters = AdapterSet(backbone)
    _noisy_tasks(adapters, "lora")
    b = batch(backbone, TEXTS)
    rows = {"embed": [0, 1, 2], "classify": [0], "summarise": [1, 2]}
    layers = backbone.transformer_layers()
    bottom, top = _Counter(layers[0]), _Counter(layers[-1])
    with torch.no_grad():
        adapters.branched_states(b["input_ids"], b["attention_mask"], rows)
        shared = (bottom.calls, top.calls)
        adapters.branched_states(b["input_ids"], b["attention_mask"], rows, share=False)
    bottom.remove(), top.remove()
    assert adapters.shared_split(list(rows)) == 2
    assert shared == (1, 3)  # frozen layers once for the batch, adapted layers once per task
    assert (bottom.calls - shared[0], top.calls - shared[1]) == (3, 3)  # separate passes: everything per task
    assert all(layer.forward.__func__ is type(layer).forward for layer in layers)  # replay undone
    adapters.close()


def test_tasks_adapting_different_depths_share_the_lowest_common_trunk():
    backbone = tiny_backbone("bert")
    adapters = AdapterSet(backbone)
    adapters.add("deep", AdapterConfig(kind="lora", layers=3))
    adapters.add("shallow", AdapterConfig(kind="lora", layers=1))
    adapters.add("everywhere", AdapterConfig(kind="lora", layers=None))
    assert adapters.shared_split(["deep", "shallow", None]) == 1
    assert adapters.shared_split(["shallow", None]) == 3
    assert adapters.shared_split(["everywhere", "shallow"]) == 0  # nothing below every adapter: no trunk
    assert adapters.shared_split([None]) == 0  # the plain backbone alone needs no branching
    adapters.close()
