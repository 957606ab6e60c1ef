"""`kb tag` and `kb summarise`: run an active adapter on one document or file, storing nothing.

They go through enrichment's shared pass (one document, one task), so a document is read exactly as
`kb enrich` reads it: its stored chunks, or for a file, the chunks ingestion would cut. With a `user`
they show only a document that user may read (search/access.py); any other is "no document".
"""

from __future__ import annotations

from pathlib import Path

from kb_pipeline.config import Settings
from kb_pipeline.enrich.shared_pass import ChunkWork, DocWork, TaskModels, load_task_models, shared_pass
from kb_pipeline.errors import NotAvailable
from kb_pipeline.ingest.readers import read_document
from kb_pipeline.ingest.text_utils import ReadError
from kb_pipeline.search.access import find_readable, not_found, reader_for
from kb_pipeline.store.db import session_factory


def _document(settings: Settings, ref: str, user: str | None) -> DocWork:
    with session_factory(settings)() as session:
        doc = find_readable(session, ref, reader_for(session, user))
        if doc is None or doc.status != "active":
            raise NotAvailable(not_found(ref))
        chunks = [ChunkWork(c.id, c.text, c.char_start, c.char_end, False) for c in doc.chunks]
        return DocWork(doc.id, doc.version, doc.title, doc.text, chunks)


def predict_one(doc: DocWork, task: str, models: TaskModels):
    """One document task's output for one document, through the shared pass; refuses a task without an adapter."""
    if task not in models.heads:
        raise NotAvailable(f"no active {task} adapter: run `kb train {task}`")
    doc.needs = {task}
    return shared_pass(models, [doc]).outputs[task][doc.id]


def tag_document(settings: Settings, ref: str, models: TaskModels | None = None, user: str | None = None) -> dict:
    doc = _document(settings, ref, user)
    models = models or load_task_models(settings)
    labels = predict_one(doc, "classify", models)
    return {"title": doc.title, **labels.as_row(), "adapter_version": models.versions["classify"]}


def summarise_document(
    settings: Settings, ref: str, models: TaskModels | None = None, user: str | None = None
) -> dict:
    return _summarise(settings, _document(settings, ref, user), models)


def summarise_file(settings: Settings, path: Path, models: TaskModels | None = None) -> dict:
    try:
        parsed = read_document(Path(path), max_bytes=settings.max_file_bytes)
    except ReadError as exc:
        raise NotAvailable(str(exc)) from None
    from kb_pipeline.backbone.tokenizer import chunk_tokenizer
    from kb_pipeline.tasks.chunks import chunk_spans

    models = models or load_task_models(settings)
    tokenizer = chunk_tokenizer(settings.backbone, str(settings.models_dir))  # what ingestion cuts chunks with
    spans = chunk_spans(parsed.text, tokenizer, None, settings.chunk_tokens, settings.chunk_overlap)
    chunks = [ChunkWork(None, parsed.text[a:b], a, b, False) for a, b in spans]
    doc = DocWork(0, 0, parsed.title, parsed.text, chunks)
    return _summarise(settings, doc, models) | {"path": str(Path(path).resolve())}


def _summarise(settings: Settings, doc: DocWork, models: TaskModels | None) -> dict:
    models = models or load_task_models(settings)
    summary = predict_one(doc, "summarise", models)
    return {"title": doc.title, "summary": summary.text, "adapter_version": models.versions["summarise"]}
