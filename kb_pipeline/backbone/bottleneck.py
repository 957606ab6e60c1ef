"""The classic bottleneck adapter (Houlsby et al.): h = act(W x + b); y = x + W' h + b'.

peft has no such method, so it lives here: one small module per task, and one wrapper per adapted
feed-forward block that routes through whichever task is active.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


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


class _Switch:
    """The set's active task, shared by reference with every BottleneckLayer."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: str | None = None


class BottleneckLayer(nn.Module):
    """Wraps one feed-forward module and adds the active task's bottleneck to its output.

    Placement is Houlsby's: on the FFN output before the residual add (bert: `layer.output.dense`, ahead of
    BertOutput's dropout + LayerNorm(x + input); llama: `layer.mlp`). Inactive tasks are skipped entirely.
    """

    adapter_layer_names = ("bottleneck",)  # peft's convention: where the per-task modules live

    def __init__(self, base_layer: nn.Module, switch: _Switch):
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
