"""`kb init`, `kb ingest` and the commands that read what ingestion stored."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from kb_pipeline.cli.common import (
    JsonOpt,
    UserError,
    UserOpt,
    app,
    clean,
    command,
    data,
    emit_json,
    err,
    out,
    progress_bar,
    ready_settings,
    safe_url,
    settings,
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
    info = {"home": str(s.home), "database": safe_url(s.database_url), "revision": after, "previous_revision": before}
    if json_out:
        emit_json(info)
    else:
        verb = "already up to date" if before == after else ("created" if before is None else "upgraded")
        out.print(f"Knowledge base {verb}: {info['database']} (schema {after})", highlight=False)


@app.command()
@command
def ingest(
    paths: list[Path] = typer.Argument(..., help="Folders or files to ingest (recursively)."),
    json_out: bool = JsonOpt,
) -> None:
    """Ingest md, txt, html, pdf and docx files; unchanged files are skipped, vanished ones tombstoned."""
    from kb_pipeline.ingest.pipeline import check_paths
    from kb_pipeline.ingest.pipeline import ingest as run_ingest

    check_paths(paths)
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
    for _path, kind, message in report.errors + report.refused:
        err.print(f"[yellow]{data(kind)}[/yellow] {data(message)}", highlight=False)
    if report.errors or report.refused:
        err.print("See `kb errors` for the list.")


@app.command()
@command
def docs(user: str | None = UserOpt, json_out: bool = JsonOpt) -> None:
    """List active documents (with --user, those the user may read)."""
    from kb_pipeline.search.access import readable_ids, reader_for
    from kb_pipeline.store import repo
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        reader = reader_for(session, user)
        rows = repo.document_summaries(session)
        if not reader.operator:
            allowed = readable_ids(session, reader)
            rows = [r for r in rows if r["id"] in allowed]
    if json_out:
        emit_json(rows)
        return
    wide = out.width >= 150  # paths only when they fit; `kb docs --json` always has them
    table = Table()
    for name, width in (("id", 4), ("type", 4), ("chunks", 6), ("category", 13)):
        table.add_column(name, no_wrap=True, min_width=width)
    table.add_column("title", max_width=44, no_wrap=True, overflow="ellipsis")
    table.add_column("tags", max_width=30, no_wrap=True, overflow="ellipsis")
    if wide:
        table.add_column("path", max_width=48, no_wrap=True, overflow="ellipsis")
    for r in rows:
        cells = [str(r["id"]), _short_mime(r["mime"]), str(r["chunks"]), r["category"] or "", r["title"],
                 ", ".join(r["tags"]), *([_short_path(r["path"])] if wide else [])]
        table.add_row(*(Text(clean(c)) for c in cells))  # Text: cells are data, never markup
    out.print(table)
    out.print(f"{len(rows)} documents")


@app.command()
@command
def show(
    doc: str = typer.Argument(..., help="Document id or path."), user: str | None = UserOpt, json_out: bool = JsonOpt
) -> None:
    """Show one document: metadata, labels with where they came from, access groups and chunks."""
    from kb_pipeline.review import document_label_view
    from kb_pipeline.search.access import find_readable, not_found, reader_for
    from kb_pipeline.store import repo
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        found = find_readable(session, doc, reader_for(session, user))
        if found is None:  # missing or not readable by --user: the same message, so nothing leaks
            raise UserError(not_found(doc))
        info = {
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
            "labels": document_label_view(session, found.id),  # provenance: file, reviewer or model
            "chunks": [
                {"id": c.id, "ordinal": c.ordinal, "char_start": c.char_start, "char_end": c.char_end,
                 "token_count": c.token_count, "text": c.text}
                for c in found.chunks
            ],
            "text": found.text,
        }
    if json_out:
        emit_json(info)
        return
    _print_document(info)


def _print_document(d: dict) -> None:
    gold = d["gold"]
    out.print(f"[bold]{data(d['title'])}[/bold]  (#{d['id']}, v{d['version']}, {data(d['status'])})")
    out.print(f"path:     {clean(d['path'])}", markup=False, soft_wrap=True)  # unbroken, to copy
    out.print(f"type:     {clean(d['mime'])}, {d['size']} bytes, {len(d['chunks'])} chunks", markup=False)
    out.print(f"category: {clean(gold['category'] or '-')}   tags: {clean(', '.join(gold['tags'])) or '-'}",
              markup=False)
    out.print(f"access:   {clean(', '.join(gold['acl'])) or 'everyone'}", markup=False)
    for line in _provenance_lines(d["labels"]):
        out.print(line, markup=False, soft_wrap=True)
    if gold["summary"]:
        out.print(f"summary:  {clean(gold['summary'], multiline=True)}", markup=False)
    preview = d["text"][:600]
    out.print("\n" + clean(preview, multiline=True) + ("…" if len(d["text"]) > 600 else ""), markup=False)


def _provenance_lines(labels: dict | None) -> list[str]:
    """Where each label came from: the file, a reviewer (who, when, what the model said) or the model."""
    if not labels:
        return []

    def origin(g: dict) -> str:
        if g["origin"] != "review":
            return "front matter"
        was = f", model said {g['predicted_label']}" if g["action"] == "replaced" else ""
        changed = ", document changed since" if g["content_changed"] else ""
        return f"{g['action']} by {g['reviewer']} {(g['reviewed_at'] or '')[:16]}{was}{changed}"

    lines = []
    if labels["needs_review"]:
        lines.append("status:   needs review (the model was not confident enough to set a category)")
    gold = labels["gold"]
    if gold["category"] or gold["tags"] or labels["rejected_tags"]:
        lines.append("labels:")
    if gold["category"]:
        lines.append(f"  category {gold['category']['label']}: {origin(gold['category'])}")
    lines += [f"  tag {t['label']}: {origin(t)}" for t in gold["tags"]]
    lines += [f"  tag {t['tag']}: rejected by {t['reviewer']} {(t['reviewed_at'] or '')[:16]}" for t in labels["rejected_tags"]]
    predicted = labels["predicted"]
    if predicted["category"]:
        c = predicted["category"]
        lines.append(f"predicted: category {c['label']} {c['score']:.2f} ({c['status']}, adapter v{c['adapter_version']}"
                     f"{', stale' if c['stale'] else ''})")
    tags = [f"{t['tag']} {t['score']:.2f}{'' if t['status'] == 'applied' else ' (' + t['status'] + ')'}"
            for t in predicted["tags"]]
    if tags:
        lines.append(f"predicted: tags {', '.join(tags)}")
    return [clean(line) for line in lines]


@app.command()
@command
def stats(user: str | None = UserOpt, json_out: bool = JsonOpt) -> None:
    """Counts of documents, chunks, labels and the last ingest run (with --user: of what the user may read)."""
    from kb_pipeline.search.access import reader_for
    from kb_pipeline.search.overview import document_stats
    from kb_pipeline.store import ingest_runs, repo
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s).begin() as session:
        ingest_runs.mark_abandoned_runs(session)  # a run whose process is gone is not `running`
    with session_factory(s)() as session:
        reader = reader_for(session, user)
        info = {"home": str(s.home), "database": safe_url(s.database_url), **repo.stats(session)}
        info.update(document_stats(session, reader))  # counts the reader may see; tombstones are not restricted
        if not reader.operator:
            info["last_ingest"] = None  # its counts cover every file, readable or not
    if json_out:
        emit_json(info)
        return
    table = Table("what", "count", show_header=False)
    for key in ("documents", "deleted", "chunks", "tokens", "labelled_documents", "restricted_documents", "sources"):
        table.add_row(key.replace("_", " "), str(info[key]))
    for mime, n in sorted(info["by_mime"].items()):
        table.add_row(Text(f"  {clean(mime)}"), str(n))
    out.print(table)
    if info["last_ingest"]:
        li = info["last_ingest"]
        out.print(
            f"last ingest #{li['id']} ({li['status']}): {li['added']} added, {li['updated']} updated, "
            f"{li['unchanged']} unchanged, {li['deleted']} deleted, {li['errors']} errors",
            highlight=False,
        )


@app.command()
@command
def errors(
    run: int | None = typer.Option(None, help="Ingest run id (default: the latest finished run)."),
    json_out: bool = JsonOpt,
) -> None:
    """Files the last ingest run could not read, and why."""
    from kb_pipeline.store import ingest_runs
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        rows = [
            {"run_id": e.run_id, "path": e.path, "kind": e.error_kind, "message": e.message,
             "at": e.created_at.isoformat()}
            for e in ingest_runs.list_errors(session, run)
        ]
    if json_out:
        emit_json(rows)
        return
    if not rows:
        out.print("No ingest errors.")
        return
    for r in rows:  # one error per entry, paths unbroken so they can be copied
        out.print(f"[yellow]{data(r['kind'])}[/yellow] {data(r['path'])}", soft_wrap=True)
        out.print(f"    {clean(r['message'].split(': ', 1)[-1])}", soft_wrap=True, markup=False)
    out.print(f"{len(rows)} file(s) could not be ingested")


def _short_mime(mime: str) -> str:
    return {"text/markdown": "md", "text/plain": "txt", "text/html": "html", "application/pdf": "pdf"}.get(
        mime, "docx" if "wordprocessingml" in mime else mime
    )


def _short_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
