"""`kb enrich`: tags, summaries and chunk embeddings for everything missing or stale, then the index.

Each output records the adapter version and document version it came from (see store/derived.py),
so re-running does only the missing work. Without trained adapters the KB still works: chunks are
embedded by the untuned backbone (recorded as such) and tags/summaries wait for their adapters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from kb_pipeline.backbone.adapter_files import load_adapter
from kb_pipeline.backbone.adapters import AdapterSet
from kb_pipeline.backbone.loading import Backbone, load_backbone
from kb_pipeline.config import Settings
from kb_pipeline.store import derived
from kb_pipeline.store.db import session_factory
from kb_pipeline.training import registry
from kb_pipeline.training.classify import Classifier
from kb_pipeline.training.datasets import model_input
from kb_pipeline.training.embed import embed_texts
from kb_pipeline.training.summarise import Summariser

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class TaskModels:
    """The active adapters of one backbone, loaded into one AdapterSet, with their heads."""

    adapters: AdapterSet
    versions: dict[str, int] = field(default_factory=dict)
    classifier: Classifier | None = None
    summariser: Summariser | None = None

    @property
    def embed_key(self) -> str:
        if "embed" in self.versions:
            return f"adapter:{self.versions['embed']}"
        return f"backbone:{self.adapters.backbone.weights_hash[:16]}"

    @property
    def embed_task(self) -> str | None:
        return "embed" if "embed" in self.versions else None

    def embed(self, texts: Sequence[str]):
        return embed_texts(self.adapters, texts, self.embed_task, max_length=EMBED_MAX_LENGTH)


EMBED_MAX_LENGTH = 256  # chunks are ~200 tokens; queries are short


def load_task_models(settings: Settings, backbone: Backbone | None = None) -> TaskModels:
    backbone = backbone or load_backbone(settings.backbone, settings.models_dir)
    models = TaskModels(AdapterSet(backbone))
    with session_factory(settings)() as session:
        actives = registry.active_versions(session, backbone.weights_hash)
    for task, version in actives.items():
        _, head, meta = load_adapter(models.adapters, version.path, task=task)
        models.versions[task] = version.id
        if task == "classify":
            models.classifier = Classifier.from_tensors(head, meta["head"])
        elif task == "summarise":
            models.summariser = Summariser.from_tensors(head, meta["head"])
    return models


def current_embed_key(settings: Settings) -> str:
    """The embedder search and the index use now (loads the backbone to know its hash)."""
    backbone = load_backbone(settings.backbone, settings.models_dir)
    with session_factory(settings)() as session:
        active = registry.active_version(session, "embed", backbone.weights_hash)
    return f"adapter:{active.id}" if active else f"backbone:{backbone.weights_hash[:16]}"


@dataclass
class EnrichReport:
    tagged: int = 0
    summarised: int = 0
    embedded: int = 0
    embed_key: str = ""
    adapters: dict[str, int] = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def enrich(
    settings: Settings, *, models: TaskModels | None = None, on_progress: ProgressFn | None = None, batch_size: int = 32
) -> EnrichReport:
    started = time.perf_counter()
    models = models or load_task_models(settings)
    Session = session_factory(settings)
    report = EnrichReport(embed_key=models.embed_key, adapters=dict(models.versions))
    with Session() as session:
        chunks = derived.chunks_needing_embedding(session, models.embed_key)
        to_tag = derived.docs_needing_labels(session, models.versions["classify"]) if models.classifier else []
        to_sum = derived.docs_needing_summary(session, models.versions["summarise"]) if models.summariser else []

    for batch in _batches(chunks, batch_size * 2, "embed", on_progress):
        vectors = models.embed([text for _, _, text in batch])
        with Session.begin() as session:
            report.embedded += derived.save_embeddings(session, models.embed_key, [(c, v) for c, v, _ in batch], vectors)

    for batch in _batches(to_tag, batch_size, "classify", on_progress):
        predictions = models.classifier.predict(models.adapters, [model_input(t, x) for _, _, t, x in batch])
        rows = [dict(p, document_id=d, document_version=v) for (d, v, _, _), p in zip(batch, predictions)]
        with Session.begin() as session:
            derived.save_labels(session, rows, models.versions["classify"])
        report.tagged += len(rows)

    for batch in _batches(to_sum, batch_size, "summarise", on_progress):
        summaries = models.summariser.predict(models.adapters, [x for _, _, _, x in batch])
        rows = [dict(document_id=d, document_version=v, summary=s) for (d, v, _, _), s in zip(batch, summaries)]
        with Session.begin() as session:
            derived.save_summaries(session, rows, models.versions["summarise"])
        report.summarised += len(rows)

    from kb_pipeline.indexing.sync import sync_index

    report.index = sync_index(settings, models.embed_key, dim=models.adapters.backbone.hidden_size)
    report.seconds = time.perf_counter() - started
    return report


def _batches(items: list, size: int, stage: str, on_progress: ProgressFn | None) -> Iterator[list]:
    if on_progress:
        on_progress(stage, 0, len(items))
    for start in range(0, len(items), size):
        batch = items[start : start + size]
        yield batch
        if on_progress:
            on_progress(stage, start + len(batch), len(items))
