"""Running the app: uvicorn in this process (`kb web`), in the foreground or in a thread (`kb serve --web`)."""

from __future__ import annotations

import threading

from kb_pipeline.config import Settings
from kb_pipeline.web.app import create_app


def make_server(settings: Settings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning"):
    """A uvicorn.Server for the app; the searcher is loaded before it returns, so errors come before the port opens."""
    import uvicorn

    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, proxy_headers=False,
                            server_header=False)
    return uvicorn.Server(config)


def serve_in_thread(settings: Settings, host: str = "127.0.0.1", port: int = 8000):
    """Start the site in a daemon thread beside other work; returns (server, thread): set server.should_exit to stop."""
    server = make_server(settings, host, port)  # outside the main thread uvicorn leaves signals alone
    thread = threading.Thread(target=server.run, name="kb-web", daemon=True)
    thread.start()
    return server, thread
