"""`kb enrich`: every registered task's output for everything missing or stale, then the index.

One shared pass per batch of documents: their chunks are tokenised once, the frozen lower layers run once
over them (backbone/forward.py), and each task's adapted top layers branch off those states:

    chunks -> token ids -> frozen layers[:split] -> trunk states -+-> embed top layers, every chunk -> mean, L2
                                                                 +-> each document task's top layers, the chunks
                                                                     its head plans to read -> read -> finish

Document tasks are whatever tasks/registry.py holds with a loaded head (classify: first chunks -> category
and tags; summarise: chunks holding scored sentences -> summary). Each output records the adapter version
and document version it came from (store/outputs.py), so re-running does only the missing work. Without
trained adapters the KB still works: chunks are embedded by the untuned backbone (recorded as such) and the
document tasks wait for their adapters. Heads that cannot share the trunk (a decoder's abstractive summariser)
and documents without chunks get a pass of their own after the shared one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from sqlalchemy import select

from kb_pipeline.backbone.adapters import AdapterSet
from kb_pipeline.backbone.heads import l2_normalize, mean_pool
from kb_pipeline.backbone.loading import Backbone, load_backbone
from kb_pipeline.config import Settings
from kb_pipeline.store import outputs
from kb_pipeline.store.db import run_transaction, session_factory
from kb_pipeline.store.queries import active_version, active_versions
from kb_pipeline.store.schema import Chunk, Document
from kb_pipeline.tasks.chunks import CHUNK_MAX_LENGTH, encode_chunks
from kb_pipeline.tasks.embed import EMBED_MAX_LENGTH, embed_key, embed_texts
from kb_pipeline.tasks.encoding import pad_batch, pad_id, token_limit
from kb_pipeline.tasks.registry import TASKS, load_task
from kb_pipeline.tasks.spec import ChunkText, DocInput, DocumentPredictor

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
EMBED = "embed"


@dataclass
class TaskModels:
    """The active adapters of one backbone, loaded into one AdapterSet, with the heads of the document tasks."""

    adapters: AdapterSet
    versions: dict[str, int] = field(default_factory=dict)
    heads: dict[str, DocumentPredictor] = field(default_factory=dict)  # task -> loaded head (document tasks)

    @property
    def embed_key(self) -> str:
        return embed_key(self.versions.get(EMBED), self.adapters.backbone.weights_hash)

    @property
    def embed_task(self) -> str | None:
        return EMBED if EMBED in self.versions else None

    def embed(self, texts: Sequence[str]):
        return embed_texts(self.adapters, texts, self.embed_task, max_length=EMBED_MAX_LENGTH)

    def add(self, task: str, version_id: int, folder) -> None:
        """Load a saved version of a registered task into this AdapterSet (and its head, if it has one)."""
        head = load_task(self.adapters, TASKS[task], folder, version_id)
        self.versions[task] = version_id
        if head is not None:
            self.heads[task] = head


def load_task_models(settings: Settings, backbone: Backbone | None = None) -> TaskModels:
    """Every registered task's active version on this backbone (a task without one is left out)."""
    backbone = backbone or load_backbone(settings.backbone, settings.models_dir)
    models = TaskModels(AdapterSet(backbone))
    with session_factory(settings)() as session:
        actives = active_versions(session, backbone.weights_hash)
    for task, version in actives.items():
        if task in TASKS:
            models.add(task, version.id, version.path)
    return models


def current_embed_key(settings: Settings) -> str:
    """The embedder search and the index use now (loads the backbone to know its hash)."""
    backbone = load_backbone(settings.backbone, settings.models_dir)
    with session_factory(settings)() as session:
        active = active_version(session, EMBED, backbone.weights_hash)
    return embed_key(active.id if active else None, backbone.weights_hash)


@dataclass
class EnrichReport:
    embedded: int = 0
    outputs: dict[str, int] = field(default_factory=dict)  # task -> documents given a new output
    embed_key: str = ""
    adapters: dict[str, int] = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def tagged(self) -> int:
        return self.outputs.get("classify", 0)

    @property
    def summarised(self) -> int:
        return self.outputs.get("summarise", 0)

    def add(self, other: EnrichReport) -> None:
        self.embedded += other.embedded
        for task, n in other.outputs.items():
            self.outputs[task] = self.outputs.get(task, 0) + n

    def as_dict(self) -> dict:
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return fields | {"tagged": self.tagged, "summarised": self.summarised}


@dataclass
class EnrichPlan:
    """Documents with anything missing or stale, cut into batches: the unit of work for a worker."""

    embed_key: str
    adapters: dict[str, int]
    batches: list[list[int]]

    @property
    def documents(self) -> int:
        return sum(len(b) for b in self.batches)


def _needing(session, models: TaskModels, ids: Sequence[int] | None) -> dict[str, set[int]]:
    """task -> the documents (of ids, or all) lacking that task's current output."""
    return {
        task: set(TASKS[task].outputs.needing(session, models.versions[task], ids))
        for task in models.heads
        if TASKS[task].outputs is not None
    }


def plan_enrich(settings: Settings, models: TaskModels, docs_per_batch: int = 64) -> EnrichPlan:
    with session_factory(settings)() as session:
        stale = set(outputs.docs_needing_embedding(session, models.embed_key))
        for docs in _needing(session, models, None).values():
            stale |= docs
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
            report.embedded = outputs.save_embeddings(
                session, models.embed_key, [(c, version[c]) for c in chunk_ids], vectors
            )
        for task, by_doc in out.outputs.items():
            if by_doc:
                rows = [(d, by_id[d].version, output) for d, output in sorted(by_doc.items())]
                TASKS[task].outputs.save(session, rows, models.versions[task])
                report.outputs[task] = len(rows)

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
    """One document of a batch: its chunks in order and which task outputs it still lacks."""

    id: int
    version: int
    title: str
    text: str
    chunks: list[ChunkWork]
    needs: set[str] = field(default_factory=set)  # document tasks whose output is missing or stale

    def as_input(self) -> DocInput:
        return DocInput(self.title, self.text, [ChunkText(c.text, c.start, c.end) for c in self.chunks])


def load_work(session, models: TaskModels, document_ids: Sequence[int]) -> list[DocWork]:
    """The batch's documents that lack anything, with their chunks and what each still needs."""
    ids = list(document_ids)
    embed = {c for c, _, _ in outputs.chunks_needing_embedding(session, models.embed_key, ids)}
    needing = _needing(session, models, ids)
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
    work = [
        DocWork(d, v, title, text, chunks.get(d, []), {t for t, lacking in needing.items() if d in lacking})
        for d, v, title, text in docs
    ]
    return [w for w in work if w.needs or any(c.embed for c in w.chunks)]


@dataclass
class PassOutput:
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # chunk id -> (H,) float32, L2-normalised
    outputs: dict[str, dict[int, Any]] = field(default_factory=dict)  # task -> document id -> its typed output
    stats: dict = field(default_factory=dict)  # forwards and rows per task, for benchmarks and tests


def shared_pass(models: TaskModels, docs: Sequence[DocWork], batch_size: int = 32, share: bool = True) -> PassOutput:
    """Every output the documents lack, from one tokenisation and one lower-layer forward per chunk batch.

    Chunks any task reads are sorted by length and cut into batches of `batch_size`; per batch
    `AdapterSet.branched_states` runs the frozen lower layers once and each task's top layers on its rows:
    embed on the chunks lacking a vector, each document task on the chunks its head plans to read.
    share=False gives the same outputs from separate full passes per task.
    """
    adapters = models.adapters
    tokenizer = adapters.backbone.tokenizer
    limit = token_limit(adapters, CHUNK_MAX_LENGTH)
    shared = {
        task: head for task, head in models.heads.items()
        if head.shares_trunk() and token_limit(adapters, head.max_length) == limit
    }
    embed_task = models.embed_task
    out = PassOutput(
        outputs={task: {} for task in models.heads},
        stats={"batches": 0, "task_passes": 0, "rows": defaultdict(int), "share": share},
    )

    # which chunks each task reads: keys are (document index, chunk index)
    needs: dict[tuple[int, int], set] = defaultdict(set)
    for d, doc in enumerate(docs):
        for c, chunk in enumerate(doc.chunks):
            if chunk.embed:
                needs[d, c].add(embed_task)
    readers = {d for d, doc in enumerate(docs) if doc.chunks and doc.needs & set(shared)}
    keys = sorted(set(needs) | {(d, c) for d in readers for c in range(len(docs[d].chunks))})
    encoded = dict(zip(keys, encode_chunks(tokenizer, [docs[d].chunks[c].text for d, c in keys], limit)))
    plans: dict[str, dict[int, Any]] = {task: {} for task in shared}
    for d in sorted(readers):
        doc, inputs = docs[d], None
        for task in sorted(doc.needs & set(shared)):
            inputs = inputs or doc.as_input()
            plan = plans[task][d] = shared[task].plan(inputs, [encoded[d, c] for c in range(len(doc.chunks))])
            for c in shared[task].chunks_read(plan):
                needs[d, c].add(task)

    found: dict[str, dict] = {task: {} for task in shared}  # what each head collected, per document
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
            else:
                shared[task].read(hidden, task_mask, task_keys, plans[task], found[task])

    for task, task_plans in plans.items():
        for d, output in shared[task].finish(task_plans, found[task]).items():
            out.outputs[task][docs[d].id] = output
    _separate_passes(models, docs, out, batch_size)
    out.stats["rows"] = dict(out.stats["rows"])
    return out


def _tasks(needs: dict, batch: list) -> list:
    """The tasks reading any chunk of the batch, embed first (a stable order keeps adapter switches few)."""
    found = set().union(*(needs[key] for key in batch))
    return sorted(found, key=lambda t: (t not in (None, EMBED), t or ""))


def _separate_passes(models: TaskModels, docs: Sequence[DocWork], out: PassOutput, batch_size: int) -> None:
    """What the shared pass could not do: heads that do not share the trunk, documents without chunks."""
    separate = {}
    for task, head in models.heads.items():
        todo = [doc for doc in docs if task in doc.needs and doc.id not in out.outputs[task]]
        if todo:
            predictions = head.predict(models.adapters, [doc.as_input() for doc in todo], batch_size)
            out.outputs[task].update({doc.id: p for doc, p in zip(todo, predictions)})
        separate[task] = len(todo)
    if any(separate.values()):
        out.stats["separate"] = separate


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
