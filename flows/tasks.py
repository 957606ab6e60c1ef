"""Prefect tasks: thin wrappers around kb_pipeline's library functions.

Retries are for transient failures only (a dropped database connection, a locked SQLite file, I/O
errors), with exponential backoff; a bad file or missing labels fails at once with its message.

Re-running after a crash does only the missing work without Prefect's result cache: every step is
idempotent against the database, keyed by content. Ingest skips files whose sha256 is stored,
training skips a task whose latest adapter was trained on the same data (fingerprints of the
labelled documents, per backbone weights hash), and enrichment computes only outputs whose document
version or adapter version differs. A Prefect cache could claim work is done that a restored or
emptied database no longer holds; the database cannot.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from flows.progress import Counter, report
from kb_pipeline.config import Settings
from kb_pipeline.ingest import pipeline as ingest_lib
from kb_pipeline.store.db import session_factory, upgrade

TRANSIENT = (OperationalError, PoolTimeout, ConnectionError, TimeoutError, OSError)


def is_transient(task, task_run, state) -> bool:  # noqa: ARG001 (Prefect's retry_condition_fn signature)
    """Retry only errors that a second attempt can cure."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the result itself could not be read back: let the retry policy decide
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TRANSIENT)


RETRIES = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)


def _unit_name() -> str:
    unit = task_run.parameters["unit"]
    return f"parse-and-store-{len(unit.files)}-files"


def _batch_name() -> str:
    ids = task_run.parameters["document_ids"]
    return f"enrich-docs-{ids[0]}-{ids[-1]}" if ids else "enrich-nothing"


@task(name="prepare-database", **RETRIES)
def prepare_database(settings: Settings) -> None:
    """Create or upgrade the schema (what `kb init` does); a no-op when it is current."""
    upgrade(settings.database_url, "head")


@task(name="scan-folders", **RETRIES)
def scan_folders(settings: Settings, paths: list[str], files_per_unit: int) -> ingest_lib.IngestPlan:
    counter = None

    def on_file(path: str, total: int) -> None:
        nonlocal counter
        counter = counter or Counter("ingest", total)
        counter(Path(path).name)

    plan = ingest_lib.plan_ingest(settings, [Path(p) for p in paths], files_per_unit=files_per_unit, on_file=on_file)
    report("ingest", plan.total_files - sum(len(u.files) for u in plan.units), plan.total_files)
    return plan


@task(name="parse-and-store", task_run_name=_unit_name, **RETRIES)
def store_files(
    settings: Settings, unit: ingest_lib.IngestUnit, done_before: int, total: int
) -> ingest_lib.IngestReport:
    counter = Counter("ingest", total, start=done_before)
    return ingest_lib.ingest_unit(settings, unit, on_file=lambda path: counter(Path(path).name))


@task(name="close-ingest-run", **RETRIES)
def close_ingest_run(
    settings: Settings, plan: ingest_lib.IngestPlan, parts: list[ingest_lib.IngestReport]
) -> ingest_lib.IngestReport:
    return ingest_lib.finish_ingest(settings, plan, parts)


# --- training --------------------------------------------------------------------------------------


@task(name="decide-what-to-train", **RETRIES)
def decide_training(settings: Settings, tasks: list[str], force: bool) -> list:
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.training.freshness import TrainingNeed, training_need

    backbone = load_backbone(settings.backbone, settings.models_dir)
    if force:
        return [TrainingNeed(t, True, "forced") for t in tasks]
    with session_factory(settings)() as session:
        return [training_need(session, t, backbone.weights_hash, settings.retrain_share) for t in tasks]


@task(name="train-adapter", task_run_name="train-{name}", **RETRIES)
def train_adapter(settings: Settings, name: str) -> dict:
    from kb_pipeline.training.service import train_tasks

    def on_step(task_name: str, step: int, total: int, loss: float) -> None:
        report(f"train {task_name}", step, total, f"loss {loss:.3f}")

    (outcome,) = train_tasks(settings, [name], on_step=on_step)
    return outcome.as_dict()


# --- enrichment and the index ----------------------------------------------------------------------

_models: dict = {}
_models_lock = threading.Lock()


def task_models(settings: Settings):
    """The active adapters on the backbone, loaded once per process (per Dask worker), reloaded on promotion."""
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.enrich.shared_pass import load_task_models
    from kb_pipeline.store.queries import active_versions

    with _models_lock:
        backbone = load_backbone(settings.backbone, settings.models_dir)
        with session_factory(settings)() as session:
            active = tuple(sorted((t, v.id) for t, v in active_versions(session, backbone.weights_hash).items()))
        key = (settings.database_url, settings.backbone, str(settings.models_dir), active)
        cached = _models.get(key)
        if cached is None or cached.adapters.closed:  # a newer AdapterSet (training) took over the backbone
            for old in _models.values():
                old.adapters.close()
            _models.clear()
            _models[key] = load_task_models(settings, backbone)
        return _models[key]


@task(name="plan-enrichment", **RETRIES)
def plan_enrichment(settings: Settings, docs_per_batch: int):
    from kb_pipeline.enrich.shared_pass import plan_enrich

    return plan_enrich(settings, task_models(settings), docs_per_batch=docs_per_batch)


@task(name="enrich-documents", task_run_name=_batch_name, **RETRIES)
def enrich_documents(settings: Settings, document_ids: list[int]):
    from kb_pipeline.enrich.shared_pass import enrich_batch

    return enrich_batch(settings, task_models(settings), document_ids)


@task(name="update-index", **RETRIES)
def update_index(settings: Settings, rebuild: bool = False) -> dict:
    from kb_pipeline.indexing.sync import sync_index
    from kb_pipeline.search.query_encoder import prepare_query_encoder

    models = task_models(settings)
    result = sync_index(settings, models.embed_key, rebuild=rebuild, dim=models.adapters.backbone.hidden_size)
    return result | {"query_encoder": prepare_query_encoder(settings, models)}


@task(name="summarise-knowledge-base", **RETRIES)
def knowledge_base_overview(settings: Settings, example_k: int = 3) -> dict:
    from kb_pipeline.search.hybrid import open_searcher
    from kb_pipeline.search.overview import example_query, overview

    models = task_models(settings)
    result = overview(settings, models)
    query = example_query(settings)
    result["example_search"] = None
    if query:
        searcher = open_searcher(settings, models, fast_path="cached")
        with session_factory(settings)() as session:
            hits = searcher.search(session, query, k=example_k)
        result["example_search"] = {"query": query, "results": hits}
    return result
