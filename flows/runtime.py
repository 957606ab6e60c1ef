"""Prefect's environment for a KB, set before prefect is imported, and the task runners.

Prefect reads its settings when first imported, so `prefect_environment` must run first. Defaults
keep everything inside the KB: Prefect's home (its SQLite database, local results) under
`$KB_HOME/prefect`, run logs with their tracebacks in `$KB_HOME/logs/kb.log` rather than on the
console (flows.logs), analytics off, and a startup timeout long enough for the temporary local API
on a slow 2-core machine. A user's own PREFECT_* variables (say PREFECT_API_URL, to report to a real
Prefect server) always win.
"""

from __future__ import annotations

import os
import sys

from flows import logs
from kb_pipeline.config import Settings

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # The flows report their own progress and results; Prefect's INFO lines would drown them (the
    # run loggers log INFO to the log file and the API only, see flows.logs).
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def prefect_environment(settings: Settings) -> dict[str, str]:
    """Set (without overriding) the PREFECT_* variables for this KB; returns what was set."""
    if "prefect" in sys.modules and "PREFECT_HOME" not in os.environ:
        # Too late to move Prefect's home; it would silently use ~/.prefect instead of the KB's.
        raise RuntimeError("prefect was imported before prefect_environment(); import flows lazily")
    wanted = {"PREFECT_HOME": str(settings.prefect_home), **DEFAULTS}
    if not any(key in os.environ for key in logs.CONFIG_VARS):
        wanted["PREFECT_LOGGING_CONFIG_PATH"] = str(logs.write_logging_config(settings))
    applied = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    return applied


def start_local_api(settings: Settings) -> None:
    """Start Prefect's temporary local API now, one process at a time per KB.

    Each `kb run` without PREFECT_API_URL starts its own temporary server on the KB's Prefect database,
    and a server migrates that database as it starts: two first runs at once raced in those migrations
    and one died. A file lock in Prefect's home makes the second wait until the first is up (seconds);
    the runs themselves then go on side by side. Prefect keeps the server for the rest of the process.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    import fcntl

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED

    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    with open(settings.prefect_home / "local-api-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            SubprocessASGIServer().start()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def task_runner(dask_address: str | None):
    """Thread runner with one worker locally (SQLite and torch gain nothing from more), Dask when asked."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=1)


def local_dask_cluster(workers: int = 2):
    """A temporary LocalCluster: one single-threaded process per worker (torch included), allowed to start parser processes.

    Dask workers are daemonic by default, and daemonic processes may not start children; the
    sandboxed parsers need to.
    """
    import dask
    from distributed import LocalCluster

    dask.config.set({"distributed.worker.daemon": False})
    return LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
        worker_dashboard_address=None, silence_logs=40,
        # one core per worker: torch's own thread pool would otherwise oversubscribe the machine
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
