"""What every `kb` command shares: the typer app, error handling, JSON output, progress bars."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kb_pipeline.config import Settings
from kb_pipeline.errors import KBError, UsageError

app = typer.Typer(
    help="Turn a folder of documents into a searchable, auto-tagged knowledge base.", no_args_is_help=True
)
# Documents' titles, tags, summaries and paths are untrusted data: no emoji codes (":smile:" and
# "root:x:0:0" stay text), no highlighting; markup only where our own code writes it, with data
# passed through `data()` (or printed with markup=False after `clean()`).
out = Console(emoji=False, highlight=False)
err = Console(stderr=True, emoji=False, highlight=False)

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON to stdout.")
UserOpt = typer.Option(
    None, "--user",
    help="Show only what this user may read (documents without ACL or in one of their groups). "
         "Without it: everything, the KB operator's view.",
)

# Control characters (C0 and C1: ESC can clear the screen or rewrite the title bar, CR overwrite a line),
# bidi overrides that make text read differently than it is, line separators, and lone surrogates
# (which cannot be encoded at all).
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff"
_UNSAFE_LINE = re.compile(f"[\t\n{_UNSAFE}]")
_UNSAFE_TEXT = re.compile(f"[{_UNSAFE}]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object, multiline: bool = False) -> str:
    """Data as inert text for a terminal: control characters shown as \\x1b-style escapes.

    One-line fields (titles, tags, paths) escape newlines and tabs too; `multiline` keeps them (text).
    """
    text = str(value)
    if multiline:
        return _UNSAFE_TEXT.sub(_visible, text.replace("\r\n", "\n"))
    return _UNSAFE_LINE.sub(_visible, text)


def data(value: object, multiline: bool = False) -> str:
    """Data to embed in a string that also holds our own rich markup: cleaned, then markup-escaped."""
    return escape(clean(value, multiline))


UserError = UsageError  # the name command modules raise for bad arguments


def command(fn: Callable) -> Callable:
    """Register a command: a KBError becomes one clear line on stderr and its exit code; other errors are bugs
    and keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KBError as exc:
            err.print(f"[red]error:[/red] {data(exc.message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:
            outage = _database_outage(exc)
            if outage is None:
                raise
            err.print(f"[red]error:[/red] {data(outage)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _database_outage(exc: Exception) -> str | None:
    """One line for a database that went away or stayed locked after the retries; None for anything else.

    Every write is one transaction, so nothing half-written is kept and running the command again finishes it.
    """
    from sqlalchemy.exc import DBAPIError, IntegrityError

    from kb_pipeline.store.db import is_transient

    if not isinstance(exc, DBAPIError) or isinstance(exc, IntegrityError) or not is_transient(exc):
        return None
    first_line = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    return f"the database was unavailable ({first_line}); nothing half-written was kept: run the command again"


def emit_json(value: Any) -> None:
    """One JSON document on stdout. Strings holding lone surrogates (from argv or a file) cannot be
    written as UTF-8, so such a document is written with \\uXXXX escapes instead of a traceback."""
    line = json.dumps(value, ensure_ascii=False, default=str)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(value, ensure_ascii=True, default=str)
    sys.stdout.write(line + "\n")


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
