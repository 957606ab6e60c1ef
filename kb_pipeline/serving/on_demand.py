"""`kb tag` and `kb summarise`: run an active adapter on one document or file, storing nothing."""

from __future__ import annotations

from pathlib import Path

from kb_pipeline.config import Settings
from kb_pipeline.ingest.readers import ReadError, read_document
from kb_pipeline.serving.enrich import TaskModels, load_task_models
from kb_pipeline.serving.errors import NotAvailable
from kb_pipeline.store import repo
from kb_pipeline.store.db import session_factory
from kb_pipeline.training.datasets import model_input


def _document(settings: Settings, ref: str) -> tuple[str, str]:
    with session_factory(settings)() as session:
        doc = repo.find_document(session, ref)
        if doc is None or doc.status != "active":
            raise NotAvailable(f"no document {ref!r} (give an id from `kb docs` or a path)")
        return doc.title, doc.text


def tag_document(settings: Settings, ref: str, models: TaskModels | None = None) -> dict:
    title, text = _document(settings, ref)
    models = models or load_task_models(settings)
    if models.classifier is None:
        raise NotAvailable("no active classify adapter: run `kb train classify`")
    [prediction] = models.classifier.predict(models.adapters, [model_input(title, text)])
    return {"title": title, **prediction, "adapter_version": models.versions["classify"]}


def summarise_document(settings: Settings, ref: str, models: TaskModels | None = None) -> dict:
    title, text = _document(settings, ref)
    return _summarise(settings, title, text, models)


def summarise_file(settings: Settings, path: Path, models: TaskModels | None = None) -> dict:
    try:
        parsed = read_document(Path(path), max_bytes=settings.max_file_bytes)
    except ReadError as exc:
        raise NotAvailable(str(exc)) from None
    return _summarise(settings, parsed.title, parsed.text, models) | {"path": str(Path(path).resolve())}


def _summarise(settings: Settings, title: str, text: str, models: TaskModels | None) -> dict:
    models = models or load_task_models(settings)
    if models.summariser is None:
        raise NotAvailable("no active summarise adapter: run `kb train summarise`")
    [summary] = models.summariser.predict(models.adapters, [text])
    return {"title": title, "summary": summary, "adapter_version": models.versions["summarise"]}
