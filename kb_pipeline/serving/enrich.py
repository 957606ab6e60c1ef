"""`kb enrich`: tags, summaries and chunk embeddings for everything missing or stale, then the index.

One shared pass per batch of documents: their chunks are tokenised once, the frozen lower layers run once
over them (backbone/trunk.py), and each task's adapted top layers branch off those states:

    chunks -> token ids -> frozen layers[:split] -> trunk states -+-> embed top layers, every chunk -> mean, L2
                                                                 +-> classify top layers, first chunks -> heads
                                                                 +-> summarise top layers, chunks -> spans -> scorer

Each output records the adapter version and document version it came from (see store/derived.py),
so re-running does only the missing work. Without trained adapters the KB still works: chunks are
embedded by the untuned backbone (recorded as such) and tags/summaries wait for their adapters.
Adapter versions that read other inputs (decoder summarisers, versions trained before chunk inputs)
run their own pass after the shared one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from sqlalchemy import select

from kb_pipeline.backbone.adapter_files import load_adapter
from kb_pipeline.backbone.adapters import AdapterSet
from kb_pipeline.backbone.heads import l2_normalize, mean_pool
from kb_pipeline.backbone.loading import Backbone, load_backbone
from kb_pipeline.config import Settings
from kb_pipeline.store import derived
from kb_pipeline.store.db import run_transaction, session_factory
from kb_pipeline.store.schema import Chunk, Document
from kb_pipeline.training import registry
from kb_pipeline.training.chunked import CHUNK_MAX_LENGTH, combine_chunks, encode_chunks, pooled_chunks
from kb_pipeline.training.classify import Classifier
from kb_pipeline.training.datasets import model_input
from kb_pipeline.training.embed import embed_texts
from kb_pipeline.training.summarise import Summariser, plan_document
from kb_pipeline.training.tasks import pad_batch, pad_id, token_limit

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


EMBED_MAX_LENGTH = CHUNK_MAX_LENGTH  # chunks are <= 200 tokens (never truncated); queries are short


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

    def add(self, other: "EnrichReport") -> None:
        self.tagged += other.tagged
        self.summarised += other.summarised
        self.embedded += other.embedded

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class EnrichPlan:
    """Documents with anything missing or stale, cut into batches: the unit of work for a worker."""

    embed_key: str
    adapters: dict[str, int]
    batches: list[list[int]]

    @property
    def documents(self) -> int:
        return sum(len(b) for b in self.batches)


def plan_enrich(settings: Settings, models: TaskModels, docs_per_batch: int = 64) -> EnrichPlan:
    with session_factory(settings)() as session:
        stale = set(derived.docs_needing_embedding(session, models.embed_key))
        if models.classifier:
            stale.update(d for d, *_ in derived.docs_needing_labels(session, models.versions["classify"]))
        if models.summariser:
            stale.update(d for d, *_ in derived.docs_needing_summary(session, models.versions["summarise"]))
    ids = sorted(stale)
    batches = [ids[i : i + docs_per_batch] for i in range(0, len(ids), docs_per_batch)]
    return EnrichPlan(models.embed_key, dict(models.versions), batches)


def enrich_batch(
    settings: Settings, models: TaskModels, document_ids: Sequence[int], batch_size: int = 32
) -> EnrichReport:
    """Compute and store whatever these documents still lack (re-checked here, so a retry is safe).

    One shared pass (`shared_pass`) computes every output of the batch; they are stored in one transaction.
    """
    Session = session_factory(settings)
    report = EnrichReport(embed_key=models.embed_key, adapters=dict(models.versions))
    docs = run_transaction(Session, lambda session: load_work(session, models, document_ids))
    out = shared_pass(models, docs, batch_size)
    by_id = {doc.id: doc for doc in docs}

    def store(session) -> None:  # idempotent: upserts keyed by document / chunk, so a retry is safe
        if out.vectors:
            chunk_ids = sorted(out.vectors)
            version = {c.id: doc.version for doc in docs for c in doc.chunks}
            vectors = np.stack([out.vectors[c] for c in chunk_ids])
            report.embedded = derived.save_embeddings(
                session, models.embed_key, [(c, version[c]) for c in chunk_ids], vectors
            )
        if out.labels:
            rows = [dict(p, document_id=d, document_version=by_id[d].version) for d, p in sorted(out.labels.items())]
            derived.save_labels(session, rows, models.versions["classify"])
            report.tagged = len(rows)
        if out.summaries:
            rows = [
                dict(document_id=d, document_version=by_id[d].version, summary=text)
                for d, text in sorted(out.summaries.items())
            ]
            derived.save_summaries(session, rows, models.versions["summarise"])
            report.summarised = len(rows)

    run_transaction(Session, store)
    return report


class ChunkWork(NamedTuple):
    id: int | None  # None: not stored (on-demand text)
    text: str
    start: int  # char offsets in the document text
    end: int
    embed: bool  # needs a vector under the current embedder


@dataclass
class DocWork:
    """One document of a batch: its chunks in order and which outputs it still lacks."""

    id: int
    version: int
    title: str
    text: str
    chunks: list[ChunkWork]
    label: bool = False
    summary: bool = False


def load_work(session, models: TaskModels, document_ids: Sequence[int]) -> list[DocWork]:
    """The batch's documents that lack anything, with their chunks and what each still needs."""
    ids = list(document_ids)
    embed = {c for c, _, _ in derived.chunks_needing_embedding(session, models.embed_key, ids)}
    label, summary = set(), set()
    if models.classifier:
        label = {d for d, *_ in derived.docs_needing_labels(session, models.versions["classify"], ids)}
    if models.summariser:
        summary = {d for d, *_ in derived.docs_needing_summary(session, models.versions["summarise"], ids)}
    chunks: dict[int, list[ChunkWork]] = defaultdict(list)
    rows = session.execute(
        select(Chunk.document_id, Chunk.id, Chunk.text, Chunk.char_start, Chunk.char_end)
        .where(Chunk.document_id.in_(ids))
        .order_by(Chunk.document_id, Chunk.ordinal)
    )
    for doc_id, chunk_id, text, start, end in rows:
        chunks[doc_id].append(ChunkWork(chunk_id, text, start, end, chunk_id in embed))
    docs = session.execute(
        select(Document.id, Document.version, Document.title, Document.text)
        .where(Document.id.in_(ids), Document.status == "active")
        .order_by(Document.id)
    )
    work = [DocWork(d, v, title, text, chunks.get(d, []), d in label, d in summary) for d, v, title, text in docs]
    return [w for w in work if w.label or w.summary or any(c.embed for c in w.chunks)]


@dataclass
class PassOutput:
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # chunk id -> (H,) float32, L2-normalised
    labels: dict[int, dict] = field(default_factory=dict)  # document id -> Classifier prediction
    summaries: dict[int, str] = field(default_factory=dict)  # document id -> summary
    stats: dict = field(default_factory=dict)  # forwards and rows per task, for benchmarks and tests


def shared_pass(models: TaskModels, docs: Sequence[DocWork], batch_size: int = 32, share: bool = True) -> PassOutput:
    """Every output the documents lack, from one tokenisation and one lower-layer forward per chunk batch.

    Chunks any task reads are sorted by length and cut into batches of `batch_size`; per batch
    `AdapterSet.branched_states` runs the frozen lower layers once and each task's top layers on its rows:
    embed on the chunks lacking a vector, classify on each document's first chunks, summarise on the chunks
    holding its scored sentences. share=False gives the same outputs from separate full passes per task.
    """
    adapters = models.adapters
    tokenizer = adapters.backbone.tokenizer
    limit = token_limit(adapters, CHUNK_MAX_LENGTH)
    classifier, summariser = models.classifier, models.summariser
    classify_here = classifier is not None and classifier.reads_chunks and _limit(adapters, classifier) == limit
    summarise_here = summariser is not None and summariser.reads_chunks and _limit(adapters, summariser) == limit
    embed_task = models.embed_task
    out = PassOutput(stats={"batches": 0, "task_passes": 0, "rows": defaultdict(int), "share": share})

    # which chunks each task reads: keys are (document index, chunk index)
    needs: dict[tuple[int, int], set] = defaultdict(set)
    for d, doc in enumerate(docs):
        for c, chunk in enumerate(doc.chunks):
            if chunk.embed:
                needs[d, c].add(embed_task)
        if doc.label and classify_here:
            for c in range(min(classifier.first_chunks, len(doc.chunks))):
                needs[d, c].add("classify")
    summarised = [d for d, doc in enumerate(docs) if doc.summary and summarise_here and doc.chunks]
    encoded = {}  # tokenised once, for every task
    keys = sorted(set(needs) | {(d, c) for d in summarised for c in range(len(docs[d].chunks))})
    for key, enc in zip(keys, encode_chunks(tokenizer, [docs[d].chunks[c].text for d, c in keys], limit)):
        encoded[key] = enc
    plans = {}
    for d in summarised:
        doc = docs[d]
        spans = [(c.start, c.end) for c in doc.chunks]
        plans[d] = plan_document(doc.text, spans, [encoded[d, c] for c in range(len(doc.chunks))])
        for c in plans[d].by_chunk():
            needs[d, c].add("summarise")

    pooled: dict[int, dict[int, tuple]] = defaultdict(dict)  # classify: doc -> chunk -> (vector, token count)
    sentence_vectors: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)  # summarise: doc -> slot -> vector
    order = sorted(needs, key=lambda key: len(encoded[key].ids))
    out.stats["chunks"] = len(order)  # rows through the trunk: every chunk some task reads, once
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = pad_batch([encoded[key].ids for key in batch], pad_id(tokenizer))  # (B, T)
        rows = {task: [i for i, key in enumerate(batch) if task in needs[key]] for task in _tasks(needs, batch)}
        with torch.no_grad():
            states = adapters.branched_states(ids, mask, rows, share=share)  # task -> (R, T', H)
        out.stats["batches"] += 1
        out.stats["task_passes"] += len(rows)  # top-layer forwards (share=False: full forwards)
        for task, task_rows in rows.items():
            out.stats["rows"][task] += len(task_rows)
            hidden = states[task]
            task_mask = mask[task_rows, : hidden.shape[1]]
            task_keys = [batch[i] for i in task_rows]
            if task == embed_task:
                vectors = l2_normalize(mean_pool(hidden, task_mask).float()).numpy().astype(np.float32)
                for (d, c), vector in zip(task_keys, vectors):
                    out.vectors[docs[d].chunks[c].id] = vector
            elif task == "classify":
                v, n = pooled_chunks(hidden, task_mask, classifier.config["pooling"])
                for (d, c), vector, count in zip(task_keys, v.float(), n):
                    pooled[d][c] = (vector, count)
            elif task == "summarise":
                Summariser.collect(hidden, task_keys, plans, sentence_vectors)

    if classify_here:
        labelled = [d for d in pooled]
        if labelled:
            x = torch.cat([_combine(pooled[d]) for d in labelled])
            for d, prediction in zip(labelled, classifier.predict_vectors(x)):
                out.labels[docs[d].id] = prediction
    for d in summarised:
        out.summaries[docs[d].id] = summariser.summary_from(plans[d], sentence_vectors[d])
    _separate_passes(models, docs, out, classify_here, summarise_here, batch_size)
    out.stats["rows"] = dict(out.stats["rows"])
    return out


def _limit(adapters: AdapterSet, head) -> int:
    return token_limit(adapters, head.config["max_length"])


def _tasks(needs: dict, batch: list) -> list:
    """The tasks reading any chunk of the batch, embed first (a stable order keeps adapter switches few)."""
    found = set().union(*(needs[key] for key in batch))
    return sorted(found, key=lambda t: (t not in (None, "embed"), t or ""))


def _combine(chunks: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    ordered = [chunks[c] for c in sorted(chunks)]
    vectors = torch.stack([v for v, _ in ordered])  # (k, D)
    counts = torch.stack([n for _, n in ordered])  # (k,)
    return combine_chunks(vectors, counts, [len(ordered)])  # (1, D)


def _separate_passes(models: TaskModels, docs, out: PassOutput, classified: bool, summarised: bool, batch_size: int):
    """What the shared pass could not do: versions reading other inputs, documents without chunks."""
    classifier, summariser = models.classifier, models.summariser
    to_tag = [doc for doc in docs if doc.label and doc.id not in out.labels]
    if classifier is not None and to_tag:
        predictions = classifier.predict(
            models.adapters, [model_input(doc.title, doc.text) for doc in to_tag], batch_size,
            chunks=[[c.text for c in doc.chunks] for doc in to_tag],
        )
        out.labels.update({doc.id: p for doc, p in zip(to_tag, predictions)})
    to_sum = [doc for doc in docs if doc.summary and doc.id not in out.summaries]
    if summariser is not None and to_sum:
        spans = [[(c.start, c.end) for c in doc.chunks] for doc in to_sum]
        summaries = summariser.predict(models.adapters, [doc.text for doc in to_sum], chunks=spans)
        out.summaries.update({doc.id: text for doc, text in zip(to_sum, summaries)})
    if to_tag or to_sum:
        out.stats["separate"] = {"classify": len(to_tag), "summarise": len(to_sum)}


def enrich(
    settings: Settings, *, models: TaskModels | None = None, on_progress: ProgressFn | None = None, batch_size: int = 32
) -> EnrichReport:
    """plan_enrich -> enrich_batch for each batch -> sync_index; the whole of `kb enrich`."""
    started = time.perf_counter()
    models = models or load_task_models(settings)
    plan = plan_enrich(settings, models)
    report = EnrichReport(embed_key=models.embed_key, adapters=dict(models.versions))
    done = 0
    if on_progress:
        on_progress("documents", 0, plan.documents)
    for ids in plan.batches:
        report.add(enrich_batch(settings, models, ids, batch_size))
        done += len(ids)
        if on_progress:
            on_progress("documents", done, plan.documents)
    report.index = update_index(settings, models)
    report.seconds = time.perf_counter() - started
    return report


def update_index(settings: Settings, models: TaskModels) -> dict:
    """Bring the FAISS index in line with the stored embeddings of the current embedder."""
    from kb_pipeline.indexing.sync import sync_index

    return sync_index(settings, models.embed_key, dim=models.adapters.backbone.hidden_size)
