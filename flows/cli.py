"""`kb run` and `kb serve`: the commands that run Prefect flows, added to the `kb` app.

This module is the `kb` entry point. It imports prefect only inside the two commands (after
pointing Prefect's home into the KB), so every other command starts as fast as before.
"""

from __future__ import annotations

import os
import signal
from enum import StrEnum
from pathlib import Path

import typer

from kb_pipeline.cli import app
from kb_pipeline.cli.common import (
    JsonOpt,
    UserError,
    clean,
    command,
    data,
    emit_json,
    err,
    out,
    progress_bar,
)
from kb_pipeline.cli.common import (
    settings as env_settings,
)

__all__ = ["app"]


class Runner(StrEnum):
    local = "local"
    dask = "dask"


TaskRunnerOpt = typer.Option(Runner.local, "--task-runner", help="Where parsing and enrichment batches run.")
DaskAddressOpt = typer.Option(None, "--dask-address", help="tcp://host:port of a Dask scheduler (default: a temporary LocalCluster).")
DaskWorkersOpt = typer.Option(2, "--dask-workers", min=1, help="Workers of the temporary LocalCluster.")


@app.command()
@command
def run(
    paths: list[Path] = typer.Argument(..., help="Folders or files to ingest."),
    retrain: bool = typer.Option(False, "--retrain", help="Train every adapter even if its data did not change."),
    runner: Runner = TaskRunnerOpt,
    dask_address: str | None = DaskAddressOpt,
    dask_workers: int = DaskWorkersOpt,
    json_out: bool = JsonOpt,
) -> None:
    """The whole pipeline as one Prefect flow: ingest, train what needs it, enrich, index, then a report."""
    from kb_pipeline.ingest.pipeline import check_paths

    s = env_settings()
    resolved = [str(p) for p in check_paths(paths)]
    _check_runner(s, runner, dask_address)
    from flows.runtime import prefect_environment, start_local_api

    prefect_environment(s)
    try:
        start_local_api(s)
        with _dask(runner, dask_address, dask_workers) as address, _bars():
            from flows.pipeline import run_pipeline

            result = run_pipeline(resolved, dask_address=address, force_train=retrain)
    except Exception as exc:
        raise _failed_run(exc) from None
    if json_out:
        emit_json(result)
    else:
        _print_report(result)


@app.command()
@command
def serve(
    paths: list[Path] = typer.Argument(..., help="Folders to ingest on the schedule."),
    ingest_cron: str = typer.Option("*/15 * * * *", "--ingest-cron", help="When to ingest, enrich and index."),
    retrain_cron: str = typer.Option("0 2 * * *", "--retrain-cron", help="When to retrain adapters whose data changed."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the local Prefect server listens on (0.0.0.0: every interface)."),
    port: int = typer.Option(4200, "--port", help="Port of the local Prefect server started when PREFECT_API_URL is unset."),
    runner: Runner = TaskRunnerOpt,
    dask_address: str | None = DaskAddressOpt,
    web: bool = typer.Option(False, "--web", help="Also serve the search pages and API (`kb web`) from this process."),
    web_host: str = typer.Option("127.0.0.1", "--web-host", help="Address the site listens on (with --web)."),
    web_port: int = typer.Option(8000, "--web-port", min=1, max=65535, help="Port of the site (with --web)."),
) -> None:
    """Serve scheduled ingestion and retraining (Ctrl-C stops the schedules, the local server and the site)."""
    from kb_pipeline.ingest.pipeline import check_paths
    from kb_pipeline.store.db import upgrade

    s = env_settings()
    resolved = [str(p) for p in check_paths(paths)]
    _check_runner(s, runner, dask_address, serving=True)
    upgrade(s.database_url, "head")
    from flows.logs import SERVE_CONSOLE
    from flows.runtime import prefect_environment

    if "PREFECT_LOGGING_CONFIG_PATH" in prefect_environment(s):
        for key, value in SERVE_CONSOLE.items():  # one line per failing scheduled run on this console
            os.environ.setdefault(key, value)
    from flows.serve import ServerStartError, build_deployments, local_address, start_local_server, stop_server

    _check_cron(ingest_cron, "--ingest-cron")
    _check_cron(retrain_cron, "--retrain-cron")
    site = _start_site(s, web_host, web_port) if web else None
    server = None
    ui = None
    if not os.environ.get("PREFECT_API_URL"):
        err.print(f"Starting a local Prefect server on {host}:{port} (its data: {s.prefect_home}) ...",
                  highlight=False, soft_wrap=True)
        try:
            server, ui = start_local_server(s, port, host)
        except ServerStartError as exc:
            raise UserError(str(exc)) from None
        os.environ["PREFECT_API_URL"] = f"{local_address(host, port)}/api"
    ui = ui or os.environ["PREFECT_API_URL"].removesuffix("/api")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        from prefect import serve as prefect_serve

        deployments = build_deployments(resolved, ingest_cron, retrain_cron, dask_address)
        log = _log_note()
        err.print(f"Serving: ingest {data(' '.join(resolved))} on '{data(ingest_cron)}', retrain on '{data(retrain_cron)}'. "
                  f"Runs and artifacts: {ui} .{log} Ctrl-C stops.", highlight=False, soft_wrap=True)
        prefect_serve(*deployments, print_starting_message=False)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            stop_server(server)
        if site is not None:
            site[0].should_exit = True
            site[1].join(30)
    err.print("Stopped.")


def _start_site(s, host: str, port: int):
    """`kb web` in a thread of `kb serve`: scheduled runs happen in their own processes, and the site picks up
    the adapters and index builds they commit (kb_pipeline/web/engine.py)."""
    import time

    from kb_pipeline.web.server import serve_in_thread

    err.print("Loading the backbone, the embedder and the index for the site ...", highlight=False)
    server, thread = serve_in_thread(s, host, port)
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise UserError(f"the site could not listen on {host}:{port} (is the port in use?)")
    shown = f"[{host}]" if ":" in host else host
    err.print(f"Site: http://{shown}:{port}/ (API reference: /docs)", highlight=False, markup=False)
    return server, thread


def _failed_run(exc: Exception) -> Exception:
    """One line for a failed run: what went wrong and where the traceback is (the log file, not the console)."""
    from flows.logs import run_log_file, traceback_logged

    log = run_log_file()
    if log is None or not traceback_logged(exc):  # the user's own logging config, or no run got that far
        return exc
    # kb's own errors are written to be read as they are; anything else is named by its type
    detail = str(exc) if type(exc).__module__.startswith("kb_pipeline") else f"{type(exc).__name__}: {exc}"
    return UserError(f"{detail} (full traceback in {log})")


def _log_note() -> str:
    from flows.logs import run_log_file

    log = run_log_file()
    return f" Run logs and tracebacks: {log} ." if log else ""


def _check_runner(s, runner: Runner, dask_address: str | None, serving: bool = False) -> None:
    if dask_address and runner is not Runner.dask:
        raise UserError("--dask-address needs --task-runner dask")
    if runner is Runner.dask and s.is_sqlite and dask_address:
        raise UserError("a remote Dask cluster needs a shared database: set KB_DATABASE_URL to Postgres")
    if runner is Runner.dask and serving and not dask_address:
        raise UserError("kb serve with Dask needs --dask-address (a long-running scheduler)")


def _check_cron(expression: str, option: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expression)
    except ValueError:
        raise UserError(f"{option}: {expression!r} is not a cron expression (e.g. '*/15 * * * *')") from None


class _dask:
    """A temporary LocalCluster for the run when Dask is asked for without an address."""

    def __init__(self, runner: Runner, address: str | None, workers: int) -> None:
        self.runner, self.address, self.workers, self.cluster = runner, address, workers, None

    def __enter__(self) -> str | None:
        if self.runner is Runner.dask and not self.address:
            from flows.runtime import local_dask_cluster

            err.print(f"Starting a local Dask cluster with {self.workers} workers ...")
            self.cluster = local_dask_cluster(self.workers)
            self.address = self.cluster.scheduler_address
        return self.address

    def __exit__(self, *exc) -> None:
        if self.cluster is not None:
            self.cluster.close()


class _bars:
    """Rich progress bars on stderr fed by flows.progress while the flow runs."""

    def __enter__(self):
        from flows.progress import set_reporter

        self.progress = progress_bar()
        self.progress.__enter__()
        self.ids: dict[str, int] = {}
        set_reporter(self)
        return self

    def update(self, stage: str, done: int, total: int, detail: str = "") -> None:
        if stage not in self.ids:
            self.ids[stage] = self.progress.add_task(stage, total=total, detail="")
        self.progress.update(self.ids[stage], completed=done, total=total, detail=detail[-40:])

    def __exit__(self, *exc) -> None:
        from flows.progress import set_reporter

        set_reporter(None)
        self.progress.__exit__(*exc)


def _print_report(result: dict) -> None:
    ingest, training, enrichment, overview = result["ingest"], result["training"], result["enrichment"], result["overview"]
    changed = ingest["added"] + ingest["updated"] + ingest["deleted"]
    trained = [o for o in training["outcomes"].values() if o["trained"]]
    computed = enrichment["tagged"] + enrichment["summarised"] + enrichment["embedded"]
    if not changed and not trained and not computed:
        out.print("[bold]Nothing to do:[/bold] no document changed, every adapter is current, nothing was re-encoded.")
    out.print(
        f"Ingest: {ingest['added']} added, {ingest['updated']} updated, {ingest['unchanged']} unchanged, "
        f"{ingest['deleted']} deleted, {ingest['errors']} errors ({ingest['seconds']:.1f} s)",
        highlight=False, markup=False,
    )
    for path in ingest.get("error_files", [])[:5]:
        out.print(f"  could not read {clean(path)} (`kb errors` says why)", highlight=False, markup=False)
    for need in training["needs"]:
        outcome = training["outcomes"].get(need["task"])
        if outcome is None:
            out.print(f"Adapter {need['task']}: not retrained, {need['reason']}", highlight=False, markup=False)
        elif not outcome["trained"]:
            out.print(f"Adapter {need['task']}: not trained, {outcome['message']}", highlight=False, markup=False)
        else:
            metric = outcome["primary_metric"]
            out.print(
                f"Adapter {need['task']}: version {outcome['version']} {outcome['status']}, {metric} "
                f"{outcome['metrics'][metric]:.3f} (baseline {outcome['baseline'][metric]:.3f}) in "
                f"{outcome['seconds']:.0f} s; {outcome['message']}",
                highlight=False, markup=False,
            )
    out.print(
        f"Enrich: {enrichment['tagged']} documents tagged, {enrichment['summarised']} summarised, "
        f"{enrichment['embedded']} chunks embedded ({enrichment['seconds']:.1f} s)",
        highlight=False, markup=False,
    )
    out.print(
        f"Knowledge base: {overview['documents']} documents, {overview['auto_tagged_documents']} auto-tagged, "
        f"{overview['summarised_documents']} summarised, index {result['index']['count']} vectors "
        f"({result['index']['embed_key']})",
        highlight=False, markup=False,
    )
    for task, info in overview["adapters"].items():
        value, base = info["value"], info["baseline"]
        out.print(
            f"  active {task}: version {info['version']} ({info['kind']}), {info['primary_metric']} "
            f"{value:.3f} vs baseline {base:.3f}" if value is not None and base is not None else
            f"  active {task}: version {info['version']}",
            highlight=False, markup=False,
        )
    for doc in overview.get("examples", []):
        if doc["needs_review"]:
            category = f"needs review (best guess {doc['category_score']:.2f})"
        else:
            category = f"{clean(doc['category'])} {doc['category_score']:.2f}"
        tags = ", ".join(f"{clean(t['tag'])} {t['score']:.2f}" for t in doc["tags"]) or "no tags"
        gold = doc["gold"]
        truth = f"  (gold: {clean(gold['category'] or '-')}; {', '.join(clean(t) for t in gold['tags']) or '-'})"
        out.print(f"Auto-tagged: {clean(doc['title'])}  {clean(doc['path'])}", highlight=False, markup=False)
        out.print(f"  category {category}; tags {tags}{truth if gold['category'] or gold['tags'] else ''}",
                  highlight=False, markup=False)
        if doc["summary"]:
            out.print(f"  summary: {clean(doc['summary'])}", highlight=False, markup=False)
    example = overview.get("example_search")
    if example:
        out.print(f"Example search: kb search {clean(repr(example['query']))}", highlight=False, markup=False)
        for rank, hit in enumerate(example["results"], 1):
            tags = ", ".join(clean(t) for t in hit.get("tags") or [])
            out.print(f"  {rank}. {clean(hit['title'])}  [{tags}]  {clean(hit['path'])}", highlight=False, markup=False)
