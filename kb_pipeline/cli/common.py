"""What every `kb` command shares: the typer app, error handling, JSON output, progress bars."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kb_pipeline.config import ConfigError, Settings

app = typer.Typer(help="Turn a folder of documents into a searchable, auto-tagged knowledge base.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON to stdout.")


class UserError(Exception):
    """An error whose message is meant for the user as is (exit code 1, no traceback)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from kb_pipeline.backbone.paths import BackboneError
    from kb_pipeline.ingest.pipeline import IngestPathError
    from kb_pipeline.store.db import SchemaError

    return (UserError, ConfigError, SchemaError, IngestPathError, BackboneError, *EXTRA_USER_ERRORS)


EXTRA_USER_ERRORS: list[type[BaseException]] = []  # command modules add their own error types


def command(fn: Callable) -> Callable:
    """Register a command that turns known errors into one clear line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")


def settings() -> Settings:
    return Settings.from_env()


def ready_settings() -> Settings:
    """Settings for a command that needs an initialised, up-to-date database."""
    from kb_pipeline.store.db import ensure_schema

    s = settings()
    ensure_schema(s)
    return s


def progress_bar() -> Progress:
    """Progress on stderr so stdout stays clean for --json."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}", style="dim"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )




def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
