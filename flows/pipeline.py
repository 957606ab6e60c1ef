"""The Prefect flows: ingest, train, enrich (with the index), reindex, and the whole pipeline.

Every flow reads the KB's settings from the environment (KB_HOME, KB_DATABASE_URL, ...) and passes
them to its tasks, so Dask workers elsewhere need no environment of their own. `dask_address`
sends the parallel steps (parsing units, enrichment batches) to a Dask scheduler; training always
runs in the flow's own process, one task at a time, because it holds the one backbone.
"""

from __future__ import annotations

import time

from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact

from flows import artifacts
from flows import tasks as steps
from flows.progress import report
from flows.runtime import task_runner
from kb_pipeline.config import Settings
from kb_pipeline.tasks.registry import TASKS

ALL_TASKS = list(TASKS)  # what the scheduled retrain deployment names; a flow given None trains every registered task


def _settings() -> Settings:
    return Settings.from_env()


def _on(flow_fn, dask_address: str | None):
    return flow_fn.with_options(task_runner=task_runner(dask_address))


@flow(name="ingest-documents", flow_run_name="ingest {paths}")
def ingest_flow(paths: list[str], dask_address: str | None = None, files_per_unit: int = 500) -> dict:
    """Scan the folders, parse and store changed files in units (in parallel on Dask), then tombstone."""
    settings = _settings()
    steps.prepare_database(settings)
    plan = steps.scan_folders(settings, paths, files_per_unit)
    done = plan.total_files - sum(len(u.files) for u in plan.units)
    futures = []
    for unit in plan.units:
        futures.append(steps.store_files.submit(settings, unit, done, plan.total_files))
        done += len(unit.files)
    parts = [f.result() for f in futures]
    result = steps.close_ingest_run(settings, plan, parts)
    create_markdown_artifact(
        artifacts.ingest_markdown(result.as_dict(), result.errors), key="kb-ingest",
        description=f"Ingest of {', '.join(paths)}",
    )
    return result.as_dict() | {"error_files": [path for path, _, _ in result.errors]}


@flow(name="train-adapters")
def train_flow(tasks: list[str] | None = None, force: bool = False) -> dict:
    """Train each task that has no adapter yet or whose labelled data changed by more than KB_RETRAIN_SHARE."""
    settings = _settings()
    needs = steps.decide_training(settings, tasks or list(TASKS), force)
    outcomes = {need.task: steps.train_adapter(settings, need.task) for need in needs if need.needed}
    needs_d = [n.as_dict() for n in needs]
    create_markdown_artifact(
        artifacts.training_markdown(needs_d, outcomes), key="kb-adapters",
        description="Adapter metrics and promotion decisions",
    )
    return {"needs": needs_d, "outcomes": outcomes}


@flow(name="enrich-and-index")
def enrich_flow(dask_address: str | None = None, docs_per_batch: int = 64) -> dict:
    """Predict tags and summaries and embed chunks for whatever is stale (batches in parallel), then sync the index."""
    settings = _settings()
    started = time.perf_counter()
    plan = steps.plan_enrichment(settings, docs_per_batch)
    futures = steps.enrich_documents.map(unmapped(settings), plan.batches)
    totals = {"tagged": 0, "summarised": 0, "embedded": 0, "outputs": {}}
    done = 0
    report("enrich", 0, plan.documents, "documents")
    for ids, future in zip(plan.batches, futures):
        part = future.result().as_dict()
        for key in ("tagged", "summarised", "embedded"):
            totals[key] += part[key]
        for task, n in part["outputs"].items():
            totals["outputs"][task] = totals["outputs"].get(task, 0) + n
        done += len(ids)
        report("enrich", done, plan.documents, "documents")
    index = steps.update_index(settings)
    overview = steps.knowledge_base_overview(settings)
    enrichment = totals | {"embed_key": plan.embed_key, "adapters": plan.adapters,
                           "seconds": round(time.perf_counter() - started, 3)}
    create_markdown_artifact(
        artifacts.index_markdown(enrichment, index, overview), key="kb-index", description="Enrichment and index",
    )
    return {"enrichment": enrichment, "index": index, "overview": overview}


@flow(name="rebuild-index")
def reindex_flow() -> dict:
    """Rebuild the FAISS index from the embeddings stored in the database (no re-encoding)."""
    settings = _settings()
    index = steps.update_index(settings, rebuild=True)
    create_markdown_artifact(
        artifacts.index_markdown(
            {"embed_key": index["embed_key"], "tagged": 0, "summarised": 0, "embedded": 0}, index,
            steps.knowledge_base_overview(settings),
        ),
        key="kb-index", description="Index rebuilt from stored embeddings",
    )
    return index


@flow(name="kb-pipeline", flow_run_name="pipeline {paths}")
def pipeline_flow(
    paths: list[str], tasks: list[str] | None = None, force_train: bool = False,
    dask_address: str | None = None, files_per_unit: int = 500, docs_per_batch: int = 64,
) -> dict:
    """ingest -> train what needs it -> enrich -> index."""
    ingest = _on(ingest_flow, dask_address)(paths, dask_address, files_per_unit)
    training = _on(train_flow, None)(tasks, force_train)
    enrichment = _on(enrich_flow, dask_address)(dask_address, docs_per_batch)
    return {"ingest": ingest, "training": training, **enrichment}


@flow(name="scheduled-ingest", flow_run_name="scheduled ingest {paths}")
def scheduled_ingest_flow(paths: list[str], dask_address: str | None = None) -> dict:
    """What `kb serve` runs on the ingest schedule: ingest, then enrich and index (no training)."""
    ingest = _on(ingest_flow, dask_address)(paths, dask_address)
    enrichment = _on(enrich_flow, dask_address)(dask_address)
    return {"ingest": ingest, **enrichment}


@flow(name="scheduled-retrain")
def scheduled_retrain_flow(tasks: list[str] | None = None, dask_address: str | None = None) -> dict:
    """What `kb serve` runs on the retrain schedule: retrain what changed, then refresh the stale outputs."""
    training = _on(train_flow, None)(tasks, False)
    enrichment = _on(enrich_flow, dask_address)(dask_address)
    return {"training": training, **enrichment}


def run_pipeline(paths: list[str], *, dask_address: str | None = None, force_train: bool = False,
                 tasks: list[str] | None = None, files_per_unit: int = 500, docs_per_batch: int = 64) -> dict:
    """Run pipeline_flow with the right task runner (what `kb run` calls)."""
    return _on(pipeline_flow, dask_address)(
        paths, tasks, force_train, dask_address, files_per_unit, docs_per_batch,
    )
