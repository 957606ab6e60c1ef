"""What every task trainer shares: example types, the result record, tokenising and pooled forwards.

The trainers themselves live in classify.py, embed.py and summarise.py; they are
re-exported here lazily (PEP 562) so `from kb_pipeline.training.tasks import
train_classify` works without an import cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from kb_pipeline.backbone.heads import pool
from kb_pipeline.training.loop import TrainConfig, TrainHistory

if TYPE_CHECKING:
    from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet


class InsufficientData(ValueError):
    """The labelled data cannot train this task; the message says exactly what is missing."""


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
    config: "AdapterConfig"
    train_config: TrainConfig
    head_state: dict[str, Tensor]
    head_config: dict  # everything needed to rebuild the head: label lists, thresholds, pooling, budgets
    metrics: dict[str, float]  # validation metrics of the tuned adapter
    baseline: dict[str, float]  # the same metrics for the task's naive baseline
    history: TrainHistory
    adapter_params: int
    head_params: int
    backbone_params: int
    primary_metric: str
    extra: dict = field(default_factory=dict)

    @property
    def improvement(self) -> float:
        """Primary metric minus its baseline: what the adapter bought."""
        return float(self.metrics[self.primary_metric]) - float(self.baseline[self.primary_metric])


# --------------------------------------------------------------------------- tokenising


def token_limit(adapters: "AdapterSet", max_length: int | None) -> int:
    """Never exceed the backbone's own position limit, whatever the config asks."""
    limit = adapters.backbone.max_length
    return min(max_length, limit) if max_length else limit


def pad_id(tokenizer) -> int:
    """Causal tokenizers often have no pad token; padded positions are masked anyway, so eos (or 0) will do."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_batch(sequences: Sequence[Sequence[int]], pad: int, fill_labels: bool = False) -> tuple[Tensor, Tensor]:
    """Right-pad token lists: (B, T) ids (or labels padded with -100) and the (B, T) attention mask."""
    width = max(1, max(len(s) for s in sequences))
    fill = -100 if fill_labels else pad
    ids = torch.full((len(sequences), width), fill, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def encode(adapters: "AdapterSet", texts: Sequence[str], max_length: int | None) -> tuple[Tensor, Tensor]:
    """Tokenise with the backbone's tokenizer, truncated, right-padded: (B, T) ids and mask."""
    tokenizer = adapters.backbone.tokenizer
    encoded = tokenizer(list(texts), truncation=True, max_length=token_limit(adapters, max_length))
    return pad_batch(encoded["input_ids"], pad_id(tokenizer))


def pooling_for(adapters: "AdapterSet") -> str:
    """Encoders: mean of token vectors. Decoders: mean plus the last token, the only one that saw all the text."""
    return "mean+last" if adapters.backbone.family == "decoder" else "mean"


def pooled(adapters: "AdapterSet", texts: Sequence[str], max_length: int | None, method: str = "mean") -> Tensor:
    """Backbone hidden states (with whatever adapter is active) pooled per text: (B, H) or (B, 2H)."""
    ids, mask = encode(adapters, texts, max_length)  # (B, T), (B, T)
    hidden = adapters.hidden_states(ids, mask)  # (B, T, H)
    return pool(hidden, mask, method)


def pooled_in_batches(
    adapters: "AdapterSet", texts: Sequence[str], max_length: int | None, method: str = "mean", batch_size: int = 32
) -> Tensor:
    """`pooled` for many texts under no_grad; batches are length-sorted (less padding) and returned in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [texts[i] for i in order[start : start + batch_size]]
            chunks.append(pooled(adapters, chunk, max_length, method).float())
    if not chunks:
        return torch.zeros(0, 0)
    vectors = torch.cat(chunks)  # (N, H) in sorted order
    out = torch.empty_like(vectors)
    out[torch.tensor(order)] = vectors
    return out


# --------------------------------------------------------------------------- optimiser groups and counts


def param_groups(adapters: "AdapterSet", task: str, head: nn.Module | None, cfg: TrainConfig) -> list[dict]:
    """The task's adapter parameters at cfg.lr and its head at cfg.head_lr: nothing else can move."""
    groups = [{"params": list(adapters.parameters(task)), "lr": cfg.lr}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": cfg.head_lr or cfg.lr})
    return groups


def fresh_adapter(adapters: "AdapterSet", task: str, config: "AdapterConfig", seed: int) -> None:
    """Training starts from a newly initialised adapter (AdapterSet.add replaces any in-memory one)."""
    adapters.add(task, config, seed=seed)


def set_mode(adapters: "AdapterSet", head: nn.Module | None, training: bool) -> None:
    """Dropout on for training steps, off for validation and prediction (adapters and head alike)."""
    adapters.train(training)
    if head is not None:
        head.train(training)


@contextmanager
def training_task(adapters: "AdapterSet", task: str) -> Iterator[None]:
    """Activate `task` for the block; afterwards the previous task is back and adapter dropout is off."""
    with adapters.using(task):
        try:
            yield
        finally:
            adapters.train(False)


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


_LAZY = {
    "train_classify": "classify",
    "Classifier": "classify",
    "train_embed": "embed",
    "embed_texts": "embed",
    "train_summarise": "summarise",
    "Summariser": "summarise",
    "split_sentences": "summarise",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"kb_pipeline.training.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
