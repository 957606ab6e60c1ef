"""The classic bottleneck adapter (Houlsby et al.): h = act(W x + b); y = x + W' h + b'.

peft has no such method, so it lives here, shaped like peft's LoRA: `BottleneckAdapter` is one task's
tensors, `BottleneckLayer` wraps exactly one feed-forward module and keeps every task's adapter in a dict
keyed by task, and `BottleneckAdapters` walks the backbone's layers and swaps those wrappers in and out.
"""

from __future__ import annotations

import torch
from torch import nn

from kb_pipeline.backbone.adapters.config import AdapterConfig
from kb_pipeline.backbone.loading import Backbone

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
# Where a layer's feed-forward output is, before its residual add (bert-likes first: their `mlp` does not exist).
FFN_PATHS = ("output.dense", "mlp", "ffn", "feed_forward")


class BottleneckAdapter(nn.Module):
    """h = act(W x + b); y = x + W' h + b'. W' starts at zero so a fresh adapter is the identity."""

    def __init__(self, hidden_size: int, bottleneck_size: int, activation: str = "tanh", dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, H)
        h = self.act(self.down(x.to(self.down.weight.dtype)))  # (B, T, S)
        return x + self.up(self.dropout(h)).to(x.dtype)  # (B, T, H)


class Switch:
    """The active task, shared by reference with every BottleneckLayer of one AdapterSet."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: str | None = None


class BottleneckLayer(nn.Module):
    """Wraps one feed-forward module and adds the active task's bottleneck to its output.

    Placement is Houlsby's: on the FFN output before the residual add (bert: `layer.output.dense`, ahead of
    BertOutput's dropout + LayerNorm(x + input); llama: `layer.mlp`). Inactive tasks are skipped entirely.
    """

    adapter_layer_names = ("bottleneck",)  # peft's convention: where the per-task modules live

    def __init__(self, base_layer: nn.Module, switch: Switch):
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck = nn.ModuleDict()
        self.switch = switch

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        task = self.switch.task
        if task not in self.bottleneck:
            return out
        if isinstance(out, tuple):
            return (self.bottleneck[task](out[0]), *out[1:])
        return self.bottleneck[task](out)


class BottleneckAdapters:
    """Every bottleneck task on one backbone: installs wrappers on first use, removes them when empty."""

    def __init__(self, backbone: Backbone, switch: Switch):
        self.backbone = backbone
        self.switch = switch

    def add(self, task: str, config: AdapterConfig, layers: list[int]) -> None:
        stack = self.backbone.transformer_layers()
        for index in layers:
            wrapper = self._wrapper(stack[index])
            ref = next(wrapper.base_layer.parameters())
            dtype = torch.float32 if ref.dtype in (torch.float16, torch.bfloat16) else ref.dtype  # train in fp32
            adapter = BottleneckAdapter(
                self.backbone.hidden_size, config.bottleneck_size, config.activation, config.dropout
            )
            wrapper.bottleneck[task] = adapter.to(device=ref.device, dtype=dtype)

    def remove(self, task: str) -> None:
        """Drop the task's adapters; a wrapper left with none is swapped back for its original module."""
        model = self.backbone.model
        wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, BottleneckLayer)]
        for name, wrapper in wrappers:
            if task in wrapper.bottleneck:
                del wrapper.bottleneck[task]
            if len(wrapper.bottleneck) == 0:
                parent_path, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent_path), attr, wrapper.base_layer)

    def activate(self, task: str | None) -> None:
        self.switch.task = task  # every BottleneckLayer reads this on each forward

    def _wrapper(self, layer: nn.Module) -> BottleneckLayer:
        """The layer's FFN wrapper, installing it on first use."""
        for path in FFN_PATHS:
            parent_path, _, attr = path.rpartition(".")
            try:
                parent = layer.get_submodule(parent_path)
            except AttributeError:
                continue
            module = getattr(parent, attr, None)
            if isinstance(module, BottleneckLayer):
                return module
            if isinstance(module, nn.Module):
                wrapper = BottleneckLayer(module, self.switch)
                setattr(parent, attr, wrapper)
                return wrapper
        raise ValueError(f"{type(layer).__name__} has no feed-forward module at any of {FFN_PATHS}")
