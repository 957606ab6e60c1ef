"""The forward path: what the trunk replay assumes of transformers still holds, and heads get their rows.

backbone/forward.py skips the frozen lower layers by hooking and shadowing transformer layers instead of
reimplementing the model's forward. Its docstring lists the three internals that relies on (a, b, c); each
test below checks one on a BERT-style encoder and a Llama-style decoder, so a transformers upgrade that
breaks one fails here, by name, rather than as a wrong number somewhere in enrichment.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from kb_pipeline.backbone import forward
from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
from kb_pipeline.backbone.loading import find_transformer_layers
from tiny_models import batch, single_threaded, tiny_backbone

FAMILIES = ["bert", "llama"]
STACK_PATHS = {"bert": "encoder.layer", "llama": "model.layers"}
BROKEN = "transformers changed an internal that kb_pipeline/backbone/forward.py's trunk replay relies on ({}): "


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def _trace_layers(backbone, b):
    """Run the inner transformer once, recording every layer call: (index, args, kwargs, output), and the
    exception that stopped it, if any (the calls before it still tell which assumption broke)."""
    calls = []
    layers = backbone.transformer_layers()
    hooks = [
        layer.register_forward_hook(
            lambda _m, args, kwargs, output, i=i: calls.append((i, args, kwargs, output)), with_kwargs=True
        )
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            forward.full_forward(backbone, b["input_ids"], b["attention_mask"])
    except Exception as exc:  # reported by the test that reads it
        return calls, exc
    finally:
        for hook in hooks:
            hook.remove()
    return calls, None


def test_a_the_layers_are_one_module_list_inside_the_transformer_we_call(family):
    backbone = tiny_backbone(family)
    path, stack = find_transformer_layers(backbone.model, backbone.num_layers)
    moved = f"the layer stack moved from {STACK_PATHS[family]} to {path}"
    assert path == STACK_PATHS[family], BROKEN.format("a") + moved
    inner = backbone.model.base_model
    assert any(module is stack for module in inner.modules()), (
        BROKEN.format("a") + f"{type(inner).__name__} (model.base_model) no longer holds the layer stack"
    )
    params = inspect.signature(inner.forward).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    needed = ["input_ids", "attention_mask"]  # ours by name; output_hidden_states and use_cache may be **kwargs
    optional = ["output_hidden_states"] + (["use_cache"] if family == "llama" else [])
    missing = [n for n in needed if n not in params] + [n for n in optional if n not in params and not takes_kwargs]
    assert not missing, BROKEN.format("a") + f"{type(inner).__name__}.forward lost the arguments {missing}"


def test_b_layers_run_in_order_each_feeding_the_next_directly(family):
    backbone = tiny_backbone(family)
    b = batch(backbone)
    calls, error = _trace_layers(backbone, b)
    assert error is None, f"the tiny {family} model no longer runs: {error!r}"
    assert [i for i, *_ in calls] == list(range(backbone.num_layers)), (
        BROKEN.format("b") + f"layers ran in the order {[i for i, *_ in calls]}, not once each from the bottom"
    )
    shape = (*b["input_ids"].shape, backbone.hidden_size)
    for i, args, kwargs, _ in calls:
        first = args[0] if args else kwargs.get("hidden_states")
        assert isinstance(first, torch.Tensor) and tuple(first.shape) == shape, (
            BROKEN.format("b") + f"layer {i} no longer gets the hidden states (B, T, H) as its first argument"
        )
    for (i, _, _, output), (_, args, kwargs, _) in zip(calls, calls[1:]):
        given = args[0] if args else kwargs.get("hidden_states")
        assert given is output, (
            BROKEN.format("b") + f"something now runs between layers {i} and {i + 1}; a replayed trunk would skip it"
        )


def test_c_a_layer_returns_its_hidden_states_as_a_tensor(family):
    backbone = tiny_backbone(family)
    b = batch(backbone)
    calls, error = _trace_layers(backbone, b)
    shape = (*b["input_ids"].shape, backbone.hidden_size)
    assert calls, f"the tiny {family} model ran no layer: {error!r}"
    for i, _, _, output in calls:
        assert isinstance(output, torch.Tensor) and tuple(output.shape) == shape, (
            BROKEN.format("c") + f"layer {i} returned {type(output).__name__}, not a (B, T, H) tensor; "
            "the replayed layers return a tensor"
        )


@pytest.mark.parametrize("split", [1, 2, 3])
def test_replaying_any_trunk_gives_the_full_forward(family, split):
    """The three assumptions together: lower layers captured, then replayed, change no output."""
    backbone = tiny_backbone(family)
    b = batch(backbone)
    real = b["attention_mask"].bool()
    with torch.no_grad():
        full = forward.full_forward(backbone, b["input_ids"], b["attention_mask"])
        trunk = forward.lower_layers(backbone, split, b["input_ids"], b["attention_mask"])
        top = forward.top_layers(backbone, split, trunk, b["input_ids"], b["attention_mask"])
    assert torch.allclose(top[real], full[real], atol=1e-5), BROKEN.format("a, b or c") + "replay changed the output"
    layers = backbone.transformer_layers()
    assert all("forward" not in vars(layer) for layer in layers)  # the class's forward is back


def test_branched_states_hand_each_head_its_own_rows_and_mask():
    backbone = tiny_backbone("bert")
    adapters = AdapterSet(backbone)
    for seed, task in enumerate(("embed", "classify"), start=1):
        adapters.add(task, AdapterConfig(kind="lora", layers=2), seed=seed)
    b = batch(backbone, ["the leave policy", "deploy the service and roll back a failed release today", "x"])
    rows = {"embed": [0, 1, 2], "classify": [2, 0]}
    seen = {}

    def head(task):
        def apply(states, mask):
            seen[task] = (states, mask)
            return task, states.shape[0]
        return apply

    with torch.no_grad():
        plain = adapters.branched_states(b["input_ids"], b["attention_mask"], rows)
        headed = adapters.branched_states(
            b["input_ids"], b["attention_mask"], rows, heads={"classify": head("classify")}
        )
    assert headed["classify"] == ("classify", 2)
    assert torch.equal(headed["embed"], plain["embed"])  # no head: the states themselves
    states, mask = seen["classify"]
    assert torch.equal(states, plain["classify"])
    width = int(b["attention_mask"][[2, 0]].sum(1).max())
    assert torch.equal(mask, b["attention_mask"][[2, 0], :width])
    adapters.close()
