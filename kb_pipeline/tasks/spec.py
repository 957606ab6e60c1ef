"""What a task is: one typed TaskSpec naming its data, head, inference, trainer, metric, freshness and outputs.

Training, enrichment, freshness, the adapter registry, the CLI and `kb eval` iterate over the registered
specs (tasks/registry.py) instead of naming tasks. Inference never imports training: a spec names its
trainer by module (`trainer`), which only the training package resolves (training/trainers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol, Self

from sqlalchemy.orm import Session
from torch import Tensor

from kb_pipeline.errors import KBError

# Bumped when a head's saved config changes meaning. 2: every head reads stored chunks; the formats before
# (classify on "title + text", extractive sentences encoded alone) and their separate enrichment pass are gone.
HEAD_FORMAT = 2


class StaleAdapter(KBError, ValueError):
    """A saved adapter in a format this code no longer reads; the message says to retrain it."""


class SavedConfig:
    """A dataclass config saved as JSON beside an adapter: keys a newer config no longer has are ignored."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Self:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class TrainConfig(SavedConfig):
    """How one adapter is trained (a version records it); every task has a default in its spec."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3  # adapters: a higher rate than full fine-tuning, few parameters move
    head_lr: float | None = None  # None -> lr
    weight_decay: float = 0.0
    patience: int = 3  # epochs without validation improvement before stopping
    seed: int = 0
    max_length: int = 256  # tokens per text (also capped by the backbone's own limit)
    max_steps: int | None = None  # hard cap over all epochs (smoke runs, tests)
    grad_clip: float | None = 1.0
    warmup_ratio: float = 0.1  # linear warm-up over this share of steps, then linear decay (WarmupLinear)



class ChunkText(NamedTuple):
    """One stored chunk of a document: its text and char offsets in the document text."""

    text: str
    start: int
    end: int


class DocInput(NamedTuple):
    """What a document-level task reads: the document text and its chunks in order."""

    title: str
    text: str
    chunks: Sequence[ChunkText]


class DocumentPredictor(Protocol):
    """A loaded head that turns chunk states into one output per document.

    The shared enrichment pass asks `plan` which chunks a document needs, hands the task's top-layer
    states of those chunks to `read`, and asks `finish` for the outputs. `predict` does the same alone.
    """

    max_length: int

    def shares_trunk(self) -> bool:
        """True when this head reads stored chunks, so it can branch off the enrichment trunk."""

    def plan(self, doc: DocInput, encoded: Sequence[Any]) -> Any:
        """Per-document state: which chunks are read (see `chunks_read`) and anything the head needs later."""

    def chunks_read(self, plan: Any) -> Iterable[int]:
        """Indices into the document's chunks whose states `read` needs."""

    def read(self, hidden: Tensor, mask: Tensor, keys: Sequence[tuple[int, int]], plans: dict, found: dict) -> None:
        """Collect what the head needs from rows keys[b] = (document, chunk) of hidden (B, T, H) into found."""

    def finish(self, plans: dict[int, Any], found: dict[int, Any]) -> dict[int, Any]:
        """Each planned document's output (keyed as `plans`) from what `read` collected (all at once: one head call)."""

    def predict(self, adapters: Any, docs: Sequence[DocInput], batch_size: int = 32) -> list:
        """Outputs for documents in a pass of its own (the task's adapter is activated here)."""


@dataclass(frozen=True)
class OutputStore:
    """Where a document-level task's outputs live: which documents lack one, and how to save them.

    needing(session, adapter version, document ids or None) -> ids of active documents lacking an output.
    save(session, [(document id, document version, output)], adapter version) -> None.
    """

    needing: Callable[[Session, int, Sequence[int] | None], Iterable[int]]
    save: Callable[[Session, Sequence[tuple[int, int, Any]], int], None]


@dataclass(frozen=True)
class TaskSpec:
    """Everything about one task; register it in tasks/registry.py.

    name: the adapter's name (registry rows, folders, `kb train NAME`).
    trainer: the module that trains it, relative to the training package (".name") or absolute;
        it provides data(session) -> Split, check_data(train, val), train(...) -> TrainResult and
        evaluate(adapters, folder, val, cfg, spec) -> metrics (training/trainers.py resolves it).
    primary_metric / baseline: the validation figure the gate compares, and what the baseline is.
    must_beat_baseline: the gate refuses a version below its baseline (embed: the untuned backbone).
    fingerprint_rows(session): one tuple per document it learns from, starting with the document id;
        a changed tuple means the task's training data changed (training/freshness.py).
    load(head_state, head_config) -> DocumentPredictor, or None for a task without document outputs.
    outputs: where `load`'s predictions are stored, or None (embed stores chunk vectors itself).
    """

    name: str
    trainer: str
    primary_metric: str
    baseline: str
    default_train: TrainConfig
    fingerprint_rows: Callable[[Session], list[tuple]]
    default_kind: str = "lora"
    must_beat_baseline: bool = False
    load: Callable[[dict[str, Tensor], dict], DocumentPredictor | None] = field(default=lambda state, config: None)
    outputs: OutputStore | None = None
