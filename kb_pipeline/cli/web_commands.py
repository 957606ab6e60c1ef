"""`kb web`: the HTTP API and the search, document and review pages."""

from __future__ import annotations

import typer

from kb_pipeline.cli.common import app, command, err, ready_settings


@app.command()
@command
def web(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
) -> None:
    """Serve the search pages and the JSON API (/docs) from this process; Ctrl-C stops.

    Sign-in uses API tokens (`kb users token NAME`); KB_WEB_REQUIRE_LOGIN=1 closes the site to anonymous
    visitors, KB_REVIEWER_GROUPS names the groups that may change labels (default kb-reviewers). New adapters
    and index builds made by other processes are picked up within seconds.
    """
    from kb_pipeline.web.server import make_server

    s = ready_settings()
    err.print("Loading the backbone, the embedder and the index ...", highlight=False)
    server = make_server(s, host, port)
    shown = f"[{host}]" if ":" in host else host
    err.print(f"Serving the knowledge base on http://{shown}:{port}/ (API reference: /docs). Ctrl-C stops.",
              highlight=False, markup=False, soft_wrap=True)
    server.run()
    err.print("Stopped.")
