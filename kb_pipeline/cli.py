"""`kb`: the command line. Thin: every command calls library functions and renders their result."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

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

    return (UserError, ConfigError, SchemaError, IngestPathError, BackboneError)


def command(fn: Callable) -> Callable:
    """Register a command that turns known errors into one clear line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
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


@app.command()
@command
def init(json_out: bool = JsonOpt) -> None:
    """Create the knowledge base (KB_HOME, database schema) or upgrade it to this version."""
    from kb_pipeline.store.db import current_revision, upgrade

    s = settings()
    s.home.mkdir(parents=True, exist_ok=True)
    before = current_revision(s.database_url)
    upgrade(s.database_url)
    after = current_revision(s.database_url)
    info = {"home": str(s.home), "database": _safe_url(s.database_url), "revision": after, "previous_revision": before}
    if json_out:
        emit_json(info)
    else:
        verb = "already up to date" if before == after else ("created" if before is None else "upgraded")
        out.print(f"Knowledge base {verb}: {info['database']} (schema {after})", highlight=False)


@app.command()
@command
def ingest(
    paths: List[Path] = typer.Argument(..., help="Folders or files to ingest (recursively)."),
    json_out: bool = JsonOpt,
) -> None:
    """Ingest md, txt, html, pdf and docx files; unchanged files are skipped, vanished ones tombstoned."""
    from kb_pipeline.ingest.pipeline import ingest as run_ingest

    s = ready_settings()
    with progress_bar() as bar:
        task = bar.add_task("ingest", total=None, detail="scanning")

        def on_progress(done: int, total: int, path: str) -> None:
            bar.update(task, completed=done, total=total, detail=Path(path).name[:40])

        report = run_ingest(s, paths, progress=on_progress)
    if json_out:
        emit_json(report.as_dict())
        return
    counts = report.as_dict()
    out.print(
        ", ".join(f"{counts[k]} {k}" for k in ("added", "updated", "unchanged", "deleted", "skipped", "errors"))
        + f" in {counts['seconds']:.1f}s",
        highlight=False,
    )
    for path, kind, message in report.errors:
        err.print(f"[yellow]{kind}[/yellow] {message}", highlight=False)
    if report.errors:
        err.print("See `kb errors` for the list.")


@app.command()
@command
def docs(json_out: bool = JsonOpt) -> None:
    """List active documents."""
    from kb_pipeline.store import repo
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        rows = repo.document_summaries(session)
    if json_out:
        emit_json(rows)
        return
    table = Table("id", "title", "type", "chunks", "category", "tags", "path")
    for r in rows:
        table.add_row(
            str(r["id"]), r["title"], r["mime"].split("/")[-1][:12], str(r["chunks"]),
            r["category"] or "", ", ".join(r["tags"]), _short_path(r["path"]),
        )
    out.print(table)
    out.print(f"{len(rows)} documents")


@app.command()
@command
def show(doc: str = typer.Argument(..., help="Document id or path."), json_out: bool = JsonOpt) -> None:
    """Show one document: metadata, gold labels, access groups and chunks."""
    from kb_pipeline.store import repo
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        found = repo.find_document(session, doc)
        if found is None:
            raise UserError(f"no document {doc!r} (give an id from `kb docs` or a path)")
        data = {
            "id": found.id,
            "path": found.path,
            "title": found.title,
            "mime": found.mime,
            "status": found.status,
            "version": found.version,
            "size": found.size,
            "sha256": found.content_sha256,
            "updated_at": found.updated_at.isoformat(),
            "metadata": found.meta,
            "gold": repo.document_labels(session, found.id),
            "chunks": [
                {"id": c.id, "ordinal": c.ordinal, "char_start": c.char_start, "char_end": c.char_end,
                 "token_count": c.token_count, "text": c.text}
                for c in found.chunks
            ],
            "text": found.text,
        }
    if json_out:
        emit_json(data)
        return
    gold = data["gold"]
    out.print(f"[bold]{data['title']}[/bold]  (#{data['id']}, v{data['version']}, {data['status']})")
    out.print(f"path:     {data['path']}", highlight=False)
    out.print(f"type:     {data['mime']}, {data['size']} bytes, {len(data['chunks'])} chunks", highlight=False)
    out.print(f"category: {gold['category'] or '-'}   tags: {', '.join(gold['tags']) or '-'}", highlight=False)
    out.print(f"access:   {', '.join(gold['acl']) or 'everyone'}", highlight=False)
    if gold["summary"]:
        out.print(f"summary:  {gold['summary']}", highlight=False)
    preview = data["text"][:600]
    out.print("\n" + preview + ("…" if len(data["text"]) > 600 else ""), highlight=False)


@app.command()
@command
def stats(json_out: bool = JsonOpt) -> None:
    """Counts of documents, chunks, labels and the last ingest run."""
    from kb_pipeline.store import repo
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        data = {"home": str(s.home), "database": _safe_url(s.database_url), **repo.stats(session)}
    if json_out:
        emit_json(data)
        return
    table = Table("what", "count", show_header=False)
    for key in ("documents", "deleted", "chunks", "tokens", "labelled_documents", "restricted_documents", "sources"):
        table.add_row(key.replace("_", " "), str(data[key]))
    for mime, n in sorted(data["by_mime"].items()):
        table.add_row(f"  {mime}", str(n))
    out.print(table)
    if data["last_ingest"]:
        li = data["last_ingest"]
        out.print(
            f"last ingest #{li['id']} ({li['status']}): {li['added']} added, {li['updated']} updated, "
            f"{li['unchanged']} unchanged, {li['deleted']} deleted, {li['errors']} errors",
            highlight=False,
        )


@app.command()
@command
def errors(
    run: Optional[int] = typer.Option(None, help="Ingest run id (default: the latest finished run)."),
    json_out: bool = JsonOpt,
) -> None:
    """Files the last ingest run could not read, and why."""
    from kb_pipeline.store import repo
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        rows = [
            {"run_id": e.run_id, "path": e.path, "kind": e.error_kind, "message": e.message,
             "at": e.created_at.isoformat()}
            for e in repo.list_errors(session, run)
        ]
    if json_out:
        emit_json(rows)
        return
    if not rows:
        out.print("No ingest errors.")
        return
    table = Table("kind", "path", "message")
    for r in rows:
        table.add_row(r["kind"], r["path"], r["message"].split(": ", 1)[-1])
    out.print(table)


def _short_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":  # pragma: no cover
    app()
