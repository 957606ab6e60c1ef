"""What every trainer shares: example types, the result record, optimiser groups and modes.

The trainers live in classify.py, embed.py and summarise.py (one per registered task, see
trainers.py); the inference they train (heads, predict, pooling) lives in kb_pipeline.tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from kb_pipeline.errors import InsufficientData  # noqa: F401  (trainers raise it from here)
from kb_pipeline.tasks.spec import TrainConfig
from kb_pipeline.training.loop import TrainHistory

if TYPE_CHECKING:
    from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet


@dataclass
class ClassifyExample:
    text: str
    category: str | None
    tags: tuple[str, ...] = ()
    chunks: tuple[str, ...] = ()  # the document's first chunks, read and pooled together; () -> (text,)


@dataclass
class Pair:
    query: str
    passage: str
    doc_key: str  # the document the passage comes from: relevance is judged per document


@dataclass
class SummaryExample:
    text: str
    summary: str
    chunks: tuple[tuple[int, int], ...] = ()  # (char_start, char_end) of the stored chunks; () -> chunked on the fly


@dataclass
class TrainResult:
    task: str
    config: AdapterConfig
    train_config: TrainConfig
    head_state: dict[str, Tensor]
    head_config: dict  # the head's typed config as saved (ClassifyConfig / SummariseConfig .to_dict())
    metrics: dict[str, float]  # validation metrics of the tuned adapter
    baseline: dict[str, float]  # the same metrics for the task's naive baseline
    history: TrainHistory
    adapter_params: int
    head_params: int
    backbone_params: int
    primary_metric: str

    @property
    def improvement(self) -> float:
        """Primary metric minus its baseline: what the adapter bought."""
        return float(self.metrics[self.primary_metric]) - float(self.baseline[self.primary_metric])


# --------------------------------------------------------------------------- optimiser groups and counts


def param_groups(adapters: AdapterSet, task: str, head: nn.Module | None, cfg: TrainConfig) -> list[dict]:
    """The task's adapter parameters at cfg.lr and its head at cfg.head_lr: nothing else can move."""
    groups = [{"params": list(adapters.parameters(task)), "lr": cfg.lr}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": cfg.head_lr or cfg.lr})
    return groups


def fresh_adapter(adapters: AdapterSet, task: str, config: AdapterConfig, seed: int) -> None:
    """Training starts from a newly initialised adapter (AdapterSet.add replaces any in-memory one)."""
    adapters.add(task, config, seed=seed)


def set_mode(adapters: AdapterSet, head: nn.Module | None, training: bool) -> None:
    """Dropout on for training steps, off for validation and prediction (adapters and head alike)."""
    adapters.train(training)
    if head is not None:
        head.train(training)


@contextmanager
def training_task(adapters: AdapterSet, task: str) -> Iterator[None]:
    """Activate `task` for the block; afterwards the previous task is back and adapter dropout is off."""
    with adapters.using(task):
        try:
            yield
        finally:
            adapters.train(False)


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
