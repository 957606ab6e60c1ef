"""`kb serve`: scheduled ingestion and retraining as Prefect deployments served from this process.

Schedules need a Prefect server with its scheduler running (the temporary API that `kb run` uses
has none). With PREFECT_API_URL set, the deployments register there; without it, a local server
is started for as long as `kb serve` runs, with its database under `$KB_HOME/prefect` and its UI
on http://127.0.0.1:4200 (or `--host`/`--port`).

The UI is a page in the browser that asks the API for its data at the address the server's settings
give it, which Prefect derives from PREFECT_SERVER_API_HOST/PORT, not from `prefect server start
--host/--port`. Left alone, a UI served on another port asks port 4200 and shows no runs, so the
server is started with that address set, unless the user set PREFECT_UI_API_URL themselves.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kb_pipeline.config import Settings


class ServerStartError(RuntimeError):
    """The local Prefect server did not come up; the message points at its log."""


def build_deployments(paths: list[str], ingest_cron: str, retrain_cron: str, dask_address: str | None = None) -> list:
    """The two deployments `kb serve` runs: ingest + enrich + index on one cron, retrain on another."""
    from flows.pipeline import ALL_TASKS, scheduled_ingest_flow, scheduled_retrain_flow

    return [
        scheduled_ingest_flow.to_deployment(
            name="kb-scheduled-ingest", cron=ingest_cron, parameters={"paths": paths, "dask_address": dask_address},
            description=f"Ingest {', '.join(paths)}, then enrich and update the index.", tags=["kb-pipeline"],
        ),
        scheduled_retrain_flow.to_deployment(
            name="kb-scheduled-retrain", cron=retrain_cron,
            parameters={"tasks": ALL_TASKS, "dask_address": dask_address},
            description="Retrain adapters whose labelled data changed, then refresh stale outputs.", tags=["kb-pipeline"],
        ),
    ]


WILDCARD_HOSTS = ("0.0.0.0", "::", "")
UI_API_VARS = ("PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def local_address(host: str, port: int) -> str:
    """Where this machine reaches a server listening on host:port."""
    return f"http://{'127.0.0.1' if host in WILDCARD_HOSTS else _url_host(host)}:{port}"


def browser_address(host: str, port: int) -> str:
    """Where a browser reaches the server: its host, or this machine's name when it listens everywhere."""
    return f"http://{_url_host(socket.gethostname() if host in WILDCARD_HOSTS else host)}:{port}"


def server_environment(host: str, port: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The local server's environment: its own host and port, and the API address its UI is to use."""
    env = dict(os.environ if environ is None else environ)
    env["PREFECT_SERVER_API_HOST"], env["PREFECT_SERVER_API_PORT"] = host, str(port)
    if not any(env.get(key) for key in UI_API_VARS):
        env["PREFECT_SERVER_UI_API_URL"] = f"{browser_address(host, port)}/api"
    return env


def start_local_server(settings: Settings, port: int = 4200, host: str = "127.0.0.1",
                       timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start `prefect server start` on host:port, wait until its API answers; returns it and its UI's address."""
    log_path = settings.prefect_home / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port),
         "--analytics-off"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=server_environment(host, port),
        start_new_session=True,  # Ctrl-C reaches us once; we stop the server ourselves
    )
    log.close()  # the server holds its own copy
    health = f"{local_address(host, port)}/api/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"the Prefect server exited with code {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return process, browser_address(host, port)
        except OSError:
            time.sleep(1)
    stop_server(process)
    raise ServerStartError(f"the Prefect server did not answer on {health} within {timeout_s:.0f} s; see {log_path}")


def stop_server(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def server_log(settings: Settings) -> Path:
    return settings.prefect_home / "server.log"
