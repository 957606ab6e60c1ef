"""What one task's adapter is: plain data, saved as JSON next to its weights (no torch needed to read it)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

KINDS = ("lora", "bottleneck")
ACTIVATIONS = ("tanh", "relu", "gelu")  # the bottleneck's nonlinearity, by name
TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # becomes a ModuleDict key: no dots


@dataclass(frozen=True)
class AdapterConfig:
    """Plain data describing one task's adapter; what gets saved next to its weights."""

    kind: str = "lora"  # "lora" | "bottleneck"
    layers: int | None = None  # adapt only the top N transformer layers; None = all
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # LoRA targets; None = peft's default for the model type
    bottleneck_size: int = 64
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"adapter kind {self.kind!r} is not one of {KINDS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers={self.layers}: adapt at least one layer, or None for all")
        if self.rank < 1 or self.bottleneck_size < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"invalid sizes in {self}")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))  # lists from JSON

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AdapterConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown AdapterConfig keys: {unknown}")
        return cls(**d)


def check_task_name(task: object) -> None:
    if not isinstance(task, str) or not TASK_NAME.fullmatch(task):
        raise ValueError(f"task name {task!r} must match {TASK_NAME.pattern}")


def top_layers(top: int | None, total: int, backbone_name: str) -> list[int]:
    """Indices of the layers an adapter with `layers=top` sits in, on a stack of `total` layers."""
    if top is None:
        return list(range(total))
    if top > total:
        raise ValueError(f"layers={top} but backbone {backbone_name!r} has {total}")
    return list(range(total - top, total))
